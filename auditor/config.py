"""Every setting of a scan, declared once.

:class:`ScanConfig` is the one declaration: each field has its default, and a field that is
an ``audit scan`` option carries its command-line spec (flags, help, choices, how the
option's value becomes the field's) in its metadata, written with :func:`setting`. The
click options of ``audit scan`` and ``audit gate`` are generated from these fields in
declaration order (``auditor.cli.scan_cmd.scan_options``), so ``--help`` shows the same
default the library uses. To add a setting, add one field here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

from auditor.errors import AuditorError
from auditor.model.loading import DTYPES
from auditor.score import BASELINES, FLAG_ON
from auditor.sources import FORMATS, FieldMap, check_preview
from auditor.store.db import DEFAULT_DB

ON_ERROR = ("fail", "skip")
GENERATORS = ("hf", "vllm")  # auditor.generation.generate_base runs each
# Settings that do not change any score: excluded from the resume key.
_NOT_RESULT_SETTINGS = ("out_dir", "report", "top_n", "db", "resume", "reuse")
# The settings (besides the model, the vectors and the generation dtype) that change a sample's
# projections: the reuse key of incremental scans. Batch sizes and chunking change them only
# at float rounding level, as the rows sharing a forward do, so they are not part of it.
_PROJECTION_SETTINGS = ("baseline", "max_new_tokens", "max_prompt_tokens", "generator", "layers_path", "pairs")
# Bump when the scoring arithmetic changes (aggregation, masks, projection): stored scores of
# earlier versions are then never reused.
SCORING_VERSION = 1


def split_list(value: str | None) -> list[str] | None:
    """``"evil, sycophancy"`` -> ``["evil", "sycophancy"]``; empty or None -> None."""
    if not value:
        return None
    return [v.strip() for v in value.split(",") if v.strip()]


def trait_values(values: Iterable[str], cast: Callable[[str], Any] = float) -> dict[str, Any]:
    """``("evil=20", "sycophancy=18")`` -> dict; a bare value applies to every trait as ``*``.

    A value that ``cast`` refuses raises ValueError naming it (the CLI adds the option's name).
    """
    out: dict[str, Any] = {}
    for value in values:
        key, raw = value.split("=", 1) if "=" in value else ("*", value)
        try:
            out[key.strip()] = cast(raw)
        except ValueError:
            raise ValueError(f"{value!r}: expected TRAIT=NUMBER or NUMBER") from None
    return out


@dataclass(frozen=True)
class Option:
    """How a ScanConfig field is given on the command line (the metadata :func:`setting` writes)."""

    decls: tuple[str, ...]  # "--max-new-tokens", or ("--traits", "-t")
    help: str
    param: str | None = None  # click's parameter name where it is not the field's (--no-reuse -> no_reuse)
    choices: tuple[str, ...] | None = None
    type: Any = None  # int, float or "path"; None: click infers it from the default
    metavar: str | None = None
    multiple: bool = False
    flag: bool = False
    parse: Callable[[Any], Any] | None = None  # the option's value -> the field's value
    scan_only: bool = False  # output settings: `audit scan` has them, `audit gate` does not

    @property
    def flag_name(self) -> str:
        return next(d for d in self.decls if d.startswith("--"))

    def cli_default(self, field_default: Any) -> Any:
        """The click default that ``parse`` turns into the field's default (flags are off, repeatables empty)."""
        if self.flag:
            return False
        if self.multiple:
            return ()
        return field_default

    def to_field(self, raw: Any) -> Any:
        return self.parse(raw) if self.parse else raw


def setting(default: Any, *decls: str, help: str, **spec: Any) -> Any:
    """A ScanConfig field with its default and, when ``decls`` are given, its command-line :class:`Option`."""
    metadata = {"cli": Option(tuple(decls), help, **spec)} if decls else {"help": help}
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _negate(flag: bool) -> bool:
    return not flag


def _layers(values: Iterable[str]) -> dict[str, int]:
    return trait_values(values, int)


def _thresholds(values: Iterable[str]) -> dict[str, float]:
    return trait_values(values, float)


def _field_map(values: Iterable[str]) -> dict[str, str]:
    return dict(FieldMap.parse(values).fields)


def _role_map(values: Iterable[str]) -> dict[str, str]:
    return dict(FieldMap.parse(None, values).roles)


def _no_cap(tokens: int | None) -> int | None:
    return tokens or None  # --max-prompt-tokens 0: no cap


@dataclass
class ScanConfig:
    """Every setting of a scan; stored with the run. Field order is ``audit scan --help``'s order."""

    source: str
    traits: list[str] | None = setting(None, "--traits", "-t", help="Comma-separated traits to score (default: every vector found).", parse=split_list)
    model: str | None = setting(None, "--model", "-m", help="Hugging Face id or local model folder (default: the embedded SmolLM2-135M-Instruct).")
    vectors: str | None = setting(None, "--vectors", type="path", help="Vector folder or file (.safetensors, or published .pt) (default: vectors/<model>/).")
    layers: dict[str, int] = setting(
        {}, "--layer", multiple=True, parse=_layers, help="Layer to use, TRAIT=L or L for all (default: the vector's recommended layer). Repeatable."
    )
    baseline: str = setting(
        "prompt-last",
        "--baseline",
        choices=BASELINES,
        help="What to subtract: the base model's state at the last prompt token (prompt-last; no generation; a vector with a learned "
        "reference subtracts its prediction there), its own greedy response (generate, the paper's), or nothing (raw projection). "
        "docs/detection.md compares them.",
    )
    format: str = setting(
        "auto",
        "--format",
        choices=FORMATS,
        help="Record format (docs/formats.md); preference: prompt/chosen/rejected pairs, scored by their margin.",
    )
    fields: dict[str, str] = setting(
        {},
        "--field",
        multiple=True,
        metavar="OURS=THEIRS",
        parse=_field_map,
        help="Read one of our fields from the dataset's: prompt=question, response=best_answer, messages=conversation, role=speaker ... Repeatable.",
    )  # auditor.sources.mapping; the CLI merges it with the policy file's [scan] mapping
    roles: dict[str, str] = setting(
        {}, "--role", multiple=True, metavar="OURS=THEIRS", parse=_role_map, help="Read a role under the dataset's name: user=human, assistant=bot. Repeatable."
    )
    limit: int | None = setting(None, "--limit", type=int, help="Scan only the first N records (a preview).")
    sample: int | None = setting(
        None, "--sample", type=int, help="Scan N records spread over the whole dataset, chosen by --seed (streamed; a preview)."
    )  # auditor.sources.preview
    seed: int = setting(0, "--seed", help="Seed of --sample: the same seed gives the same records.")
    split: str = setting("train", "--split", help="Split, for hf: datasets.")
    hf_config: str | None = setting(None, "--config", help="Config name, for hf: datasets.")
    score_all_turns: bool = setting(False, "--score-all-turns", flag=True, help="Score every assistant turn of multi-turn conversations as its own row.")
    max_new_tokens: int = setting(256, "--max-new-tokens", help="Length cap of generated base responses.")
    max_prompt_tokens: int | None = setting(
        512, "--max-prompt-tokens", type=int, parse=_no_cap, help="Prompts longer than this lose tokens from their start (0: no cap)."
    )
    dtype: str = setting("auto", "--dtype", choices=DTYPES, help="auto: bfloat16 where the hardware runs it fast (AMX CPUs, GPUs), else float32.")
    device: str = setting("auto", "--device", help="auto, cpu, cuda, cuda:1, mps.")
    batch_tokens: int = setting(
        0, "--batch-tokens", help="Padded tokens per forward batch; 0: automatic (4096 on CPU, from free memory on a GPU)."
    )  # auditor.scoring.default_batch_tokens
    generation_batch_size: int = setting(
        0, "--generation-batch-size", help="Prompts generated together; 0: automatic (32 on CPU, from free memory on a GPU)."
    )  # auditor.generation.default_generation_batch_size
    generation_dtype: str = setting(
        "auto",
        "--generation-dtype",
        choices=DTYPES,
        help="dtype of the model copy that generates base responses; auto: float32 on CPU (greedy tokens then do not depend on the batch), "
        "the model's dtype on a GPU.",
    )  # auditor.generation.resolve_generation_dtype
    generator: str = setting(
        "hf",
        "--generator",
        choices=GENERATORS,
        help="Base responses with transformers (hf) or vLLM (pip install 'persona-audit[vllm]', a CUDA GPU).",
    )
    chunk_size: int = setting(256, "--chunk-size", help="Records per stored chunk (memory and resume granularity).")
    flag_on: str = setting(
        "delta",
        "--flag-on",
        choices=FLAG_ON,
        help="Per-sample score that flags use: the projection difference (delta, the paper's measure) or the raw projection of the response "
        "(bench/NOTES.md compares them).",
    )  # baseline none always flags on the projection
    flag_percentile: float = setting(95.0, "--flag-percentile", help="Flag samples above this percentile of the vector's clean calibration set.")
    thresholds: dict[str, float] = setting(
        {}, "--threshold", multiple=True, parse=_thresholds, help="Absolute flag threshold, TRAIT=VALUE (overrides calibration). Repeatable."
    )
    on_error: str = setting("fail", "--on-error", choices=ON_ERROR, help="Bad records: stop with an error, or skip them and record why.")
    db: str = setting(DEFAULT_DB, "--db", type="path", help="DuckDB database that accumulates runs.")
    trust_remote_code: bool = setting(False, "--trust-remote-code", flag=True, help="Allow a model's own Python code to run (only for models you trust).")
    layers_path: str | None = setting(None, "--layers-path", help="Dotted path of the decoder block list, for architectures persona-audit does not know.")
    resume: bool = setting(False, "--resume", flag=True, help="Continue the last unfinished run with the same settings after its last stored chunk.")
    reuse: bool = setting(
        True,
        "--no-reuse",
        flag=True,
        param="no_reuse",
        parse=_negate,
        help="Compute every sample. By default a sample whose text, model, vectors and projection settings match a sample of an earlier "
        "complete run in --db takes that run's scores (docs/incremental.md).",
    )  # auditor.store.reuse
    num_shards: int = setting(1, "--num-shards", help="Split the dataset into this many deterministic slices (by chunk).")
    shard_index: int = setting(0, "--shard-index", help="Which slice this process scans (0-based); merge the parts with audit merge.")
    # Output settings: `audit scan` only (`audit gate` has its own --report).
    out_dir: str | None = setting(
        None, "--out", type="path", scan_only=True, help="Folder for scores.parquet and report.html (default: reports/runs/<run id>/)."
    )
    report: bool = setting(True, "--no-report", flag=True, param="no_report", parse=_negate, scan_only=True, help="Do not render report.html.")
    top_n: int = setting(50, "--top-n", scan_only=True, help="Samples per trait shown in the report (with token heat maps).")
    pairs: bool | None = setting(None, help="Preference pairs (a margin run); None: decided from the first record.")

    def mapping(self) -> FieldMap:
        return FieldMap.parse(self.fields, self.roles)

    def validate(self) -> None:
        for f, option in cli_settings():
            value = getattr(self, f.name)
            if option.choices and value not in option.choices:
                raise AuditorError(f"unknown {option.flag_name} {value!r}; use one of {', '.join(option.choices)}")
        if not 0 < self.flag_percentile < 100:
            raise AuditorError("--flag-percentile must be between 0 and 100 (e.g. 95)")
        for name in ("chunk_size", "max_new_tokens", "num_shards"):
            if getattr(self, name) < 1:
                raise AuditorError(f"--{name.replace('_', '-')} must be at least 1")
        for name in ("batch_tokens", "generation_batch_size"):
            if getattr(self, name) < 0:
                raise AuditorError(f"--{name.replace('_', '-')} must be at least 1 (or 0 for automatic)")
        if not 0 <= self.shard_index < self.num_shards:
            raise AuditorError(f"--shard-index must be between 0 and {self.num_shards - 1} for --num-shards {self.num_shards}")
        check_preview(self.limit, self.sample)
        self.mapping()  # a malformed mapping fails before the model loads

    def result_key(self, model_fingerprint: str, vector_hashes: dict[str, str]) -> str:
        """Hash of everything that determines the scores: equal keys give equal results."""
        settings = {k: v for k, v in asdict(self).items() if k not in _NOT_RESULT_SETTINGS}
        settings["model_fingerprint"] = model_fingerprint
        settings["vectors"] = vector_hashes
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def reuse_key(self, lm: Any, vector_hashes: dict[str, str], generation_dtype: str) -> str:
        """Hash of everything besides a sample's text that decides its projections (incremental scans)."""
        from auditor import __version__

        settings = {k: getattr(self, k) for k in _PROJECTION_SETTINGS}
        if self.baseline != "generate":  # no base response: its settings do not matter
            settings.update(max_new_tokens=None, generator=None)
        settings.update(
            model_fingerprint=lm.fingerprint,
            dtype=str(lm.dtype),
            device=str(lm.device).split(":")[0],
            generation_dtype=generation_dtype if self.baseline == "generate" else None,
            vectors=vector_hashes,
            scoring=SCORING_VERSION,
            persona_audit=__version__,
        )
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cli_settings() -> Iterator[tuple[dataclasses.Field, Option]]:
    """The ScanConfig fields that are command-line options, with their :class:`Option`, in declaration order."""
    for f in dataclasses.fields(ScanConfig):
        if "cli" in f.metadata:
            yield f, f.metadata["cli"]


def default_of(name: str) -> Any:
    """A ScanConfig field's default, for library functions that must agree with the scan (e.g. calibration)."""
    f = next(f for f in dataclasses.fields(ScanConfig) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default

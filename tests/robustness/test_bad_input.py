"""Bad input: every kind of broken record gets an error naming file, line and fix.

Each case writes three good chats with one bad line between them (line 2) and scans it
twice on real DuckDB files with the tiny model: ``--on-error fail`` (the default) must
stop with exactly that error; ``skip`` must finish with read = scored + rejected and the
reason stored in the rejects table.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from conftest import chat, make_vectors, write_jsonl

from auditor.cli import main
from auditor.errors import InputError
from auditor.pipeline import ScanConfig, scan_run

GOOD = [chat("What is 2 plus 2?", "2 plus 2 is 4.", id="g1"), chat("Name a colour.", "Blue.", id="g2"), chat("Say hi.", "Hi there!", id="g3")]
FORMAT_HELP = (
    "use --format messages|sharegpt|alpaca|prompt-response|preference, or give each record 'messages', 'conversations', "
    "'instruction'/'output', 'prompt'/'response' or 'prompt'/'chosen'/'rejected'; or map your names to ours with --field OURS=THEIRS"
)
NO_RECORDS = "holds no records; a dataset needs at least one record: check the path, or that the file was written completely"


def msgs(*pairs):
    return {"messages": [{"role": r, "content": c} for r, c in pairs]}


# (case id, the bad line 2 as text or bytes, the reason after "<file>:2: ")
CASES = [
    (
        "malformed-json-missing-comma",
        '{"prompt": "a" "response": "b"}',
        "malformed JSON (Expecting ',' delimiter at column 16); fix the line or remove it; each line must be one JSON object",
    ),
    (
        "malformed-json-truncated",
        '{"messages": [{"role": "user", "content": "hi"}',
        "malformed JSON (Expecting ',' delimiter at column 48); fix the line or remove it; each line must be one JSON object",
    ),
    (
        "missing-role",
        json.dumps({"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}),
        'message 0 has no \'role\'; write each message as {"role": ..., "content": ...}',
    ),
    (
        "missing-role-and-content",
        json.dumps({"messages": [{"role": "user", "content": "q"}, {"text": "a"}]}),
        "message 1 has no 'role' and no 'content'; write each message as {\"role\": ..., \"content\": ...}",
    ),
    (
        "wrong-role",
        json.dumps(msgs(("bot", "q"), ("assistant", "a"))),
        "message 0 has role 'bot'; use one of system, user, assistant, or map it: --role assistant=bot",
    ),
    (
        "wrong-sharegpt-speaker",
        json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}),
        "conversation turn 1 is from 'robot'; use human, gpt or system",
    ),
    (
        "empty-response",
        json.dumps(msgs(("user", "q"), ("assistant", ""))),
        "the assistant response is empty; remove the record or give it a response (--on-error skip records it as rejected)",
    ),
    (
        "whitespace-response",
        json.dumps(msgs(("user", "q"), ("assistant", " \n\t "))),
        "the assistant response is only whitespace; remove the record or give it a response (--on-error skip records it as rejected)",
    ),
    (
        "no-assistant-turn",
        json.dumps(msgs(("system", "be brief"), ("user", "q"))),
        "no assistant message; add the assistant's reply as the last message (without one there is nothing to score)",
    ),
    (
        "ends-with-user",
        json.dumps(msgs(("user", "q"), ("assistant", "a"), ("user", "and?"))),
        "the last message is from 'user', not the assistant; end each conversation with the assistant reply to score",
    ),
    ("content-not-text", json.dumps(msgs(("user", "q"), ("assistant", 42))), "message 1 content is int, not text; make it a string"),
    ("not-an-object", "[1, 2]", "record is a list, not an object; write one JSON object per line"),
    ("unknown-format", json.dumps({"text": "hello", "label": 1}), f"unknown format (fields: label, text); {FORMAT_HELP}"),
    # 'caf' + byte 0xE9 (Latin-1 é): the bad byte is at offset 15 of the line.
    ("non-utf8", b'{"prompt": "caf\xe9", "response": "r"}', "not valid UTF-8 (byte 15); re-encode the file as UTF-8"),
    (
        "duplicate-id",
        json.dumps(chat("Another question", "Another answer", id="g1")),
        "duplicate id 'g1'; give every record a unique 'id', or remove the 'id' field to use positions",
    ),
]


@pytest.fixture(scope="module")
def vectors(tmp_path_factory, tiny_lm):
    return make_vectors(tmp_path_factory.mktemp("vec") / "v", tiny_lm.num_layers, tiny_lm.hidden_size, fingerprint=tiny_lm.fingerprint)


def write_with_bad_line(path, bad) -> str:
    lines = [json.dumps(r).encode() for r in GOOD]
    lines.insert(1, bad if isinstance(bad, bytes) else bad.encode())
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def scan(tmp_path, lm, vectors, source, **kw):
    cfg = dict(source=source, vectors=vectors, db=str(tmp_path / "audit.duckdb"), max_new_tokens=2, report=False, top_n=2)
    cfg.update(kw)
    return scan_run(ScanConfig(**cfg), lm=lm)


def stored_rejects(db: str, run_id: str):
    from auditor.store.db import connect

    with connect(db, read_only=True) as con:
        return con.execute("SELECT source, line, reason FROM rejects WHERE run_id = ? ORDER BY line", [run_id]).fetchall()


def assert_counts(result, n_read: int, n_scored: int, n_rejected: int) -> None:
    """read = scored + rejected, in the result, the runs table, the samples table and scores.parquet."""
    from auditor.store.db import connect

    assert (result.n_read, result.n_scored, result.n_rejected) == (n_read, n_scored, n_rejected)
    assert n_read == n_scored + n_rejected
    with connect(result.db_path, read_only=True) as con:
        assert con.execute("SELECT n_read, n_scored, n_rejected FROM runs WHERE run_id = ?", [result.run_id]).fetchone() == (n_read, n_scored, n_rejected)
        assert con.execute("SELECT count(*) FROM samples WHERE run_id = ?", [result.run_id]).fetchone()[0] == n_scored
        assert con.execute("SELECT count(*) FROM rejects WHERE run_id = ?", [result.run_id]).fetchone()[0] == n_rejected
    assert result.scores.height == n_scored


@pytest.mark.parametrize("case,bad,reason", CASES, ids=[c[0] for c in CASES])
def test_bad_line_fails_by_default_and_is_recorded_with_skip(tmp_path, tiny_lm, vectors, case, bad, reason):
    path = write_with_bad_line(tmp_path / "data.jsonl", bad)
    with pytest.raises(InputError) as err:
        scan(tmp_path, tiny_lm, vectors, path)
    assert str(err.value) == f"{path}:2: {reason}"

    result = scan(tmp_path, tiny_lm, vectors, path, on_error="skip")
    assert_counts(result, n_read=4, n_scored=3, n_rejected=1)
    assert stored_rejects(result.db_path, result.run_id) == [(path, 2, f"{path}:2: {reason}")]
    assert sorted(result.scores["sample_id"].to_list()) == ["g1", "g2", "g3"]


def test_sample_longer_than_the_context_is_rejected(tmp_path, tiny_lm, vectors):
    # The tiny model's context is 2048 tokens (max_position_embeddings in tests/conftest.py).
    long_answer = " word" * 2100
    path = write_with_bad_line(tmp_path / "data.jsonl", json.dumps(chat("Repeat a word many times.", long_answer, id="long")))
    tok = tiny_lm.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "Repeat a word many times."}], tokenize=False, add_generation_prompt=True)
    n_tokens = len(tok(prompt + long_answer, add_special_tokens=False)["input_ids"])
    assert n_tokens > 2100
    reason = (
        f"{n_tokens} tokens (plus 2 to generate) is longer than the model's context (2048); shorten the sample, lower --max-prompt-tokens or --max-new-tokens"
    )
    with pytest.raises(InputError) as err:
        scan(tmp_path, tiny_lm, vectors, path)
    assert str(err.value) == f"{path}:2: {reason}"
    result = scan(tmp_path, tiny_lm, vectors, path, on_error="skip")
    assert_counts(result, n_read=4, n_scored=3, n_rejected=1)
    assert stored_rejects(result.db_path, result.run_id) == [(path, 2, f"{path}:2: {reason}")]


MIXED = [
    chat("Messages format?", "Yes, messages.", id="m1"),
    {"id": "m2", "conversations": [{"from": "human", "value": "ShareGPT?"}, {"from": "gpt", "value": "Yes, ShareGPT."}]},
    {"id": "m3", "instruction": "Name the format.", "output": "Alpaca."},
    {"id": "m4", "prompt": "Prompt and response?", "response": "Yes."},
]


def test_mixed_formats_are_read_per_record_in_auto_mode(tmp_path, tiny_lm, vectors):
    """Decision: auto recognises each record on its own (concatenated datasets are common)."""
    path = write_jsonl(tmp_path / "mixed.jsonl", MIXED)
    result = scan(tmp_path, tiny_lm, vectors, path)
    assert_counts(result, n_read=4, n_scored=4, n_rejected=0)
    assert result.scores["sample_id"].to_list() == ["m1", "m2", "m3", "m4"]


def test_a_forced_format_rejects_the_records_of_other_formats(tmp_path, tiny_lm, vectors):
    path = write_jsonl(tmp_path / "mixed.jsonl", MIXED)

    def reason(fields, fmt):
        return (
            f"record lacks the fields of the messages format (fields: {fields}); "
            f"it is in the {fmt} format: use --format {fmt}, or --format auto to read each record in its own format"
        )

    reasons = {2: reason("conversations, id", "sharegpt"), 3: reason("id, instruction, output", "alpaca"), 4: reason("id, prompt, response", "prompt-response")}
    with pytest.raises(InputError) as err:
        scan(tmp_path, tiny_lm, vectors, path, format="messages")
    assert str(err.value) == f"{path}:2: {reasons[2]}"
    result = scan(tmp_path, tiny_lm, vectors, path, format="messages", on_error="skip")
    assert_counts(result, n_read=4, n_scored=1, n_rejected=3)
    assert stored_rejects(result.db_path, result.run_id) == [(path, n, f"{path}:{n}: {reasons[n]}") for n in (2, 3, 4)]


def _empty_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_text("\n  \n\n")
    (tmp_path / "empty.json").write_text("[]")
    (tmp_path / "header.csv").write_text("prompt,response\n")
    pq.write_table(pa.table({"prompt": pa.array([], pa.string()), "response": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    return ["empty.jsonl", "blank.jsonl", "empty.json", "header.csv", "empty.parquet"]


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_an_empty_dataset_is_an_error_and_stores_nothing(tmp_path, tiny_lm, vectors, on_error):
    """Decision: no records is an error (exit 2), not a passing 0-sample run: a gate must not pass on nothing."""
    for name in _empty_files(tmp_path):
        path = str(tmp_path / name)
        with pytest.raises(InputError) as err:
            scan(tmp_path, tiny_lm, vectors, path, on_error=on_error)
        assert str(err.value) == f"{path}: {NO_RECORDS}", name
    assert not (tmp_path / "audit.duckdb").exists()  # refused before any run was registered


def test_empty_dataset_through_scan_and_gate_cli(tmp_path, tiny_model_dir, vectors):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    for command, rule in (("scan", []), ("gate", ["--max-delta", "evil=100"])):
        res = CliRunner().invoke(main, [command, "empty.jsonl", "--model", tiny_model_dir, "--vectors", vectors, "-q", *rule])
        assert res.exit_code == 2, res.output
        assert res.output.strip().endswith(f"Error: empty.jsonl: {NO_RECORDS}")


def test_parquet_without_usable_columns_names_file_row_and_columns(tmp_path, tiny_lm, vectors):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "export.parquet")
    pq.write_table(pa.table({"text": ["a", "b", "c"], "label": [0, 1, 0], "score": [0.1, 0.2, 0.3]}), path)
    reason = f"unknown format (columns: label, score, text); {FORMAT_HELP}"
    with pytest.raises(InputError) as err:
        scan(tmp_path, tiny_lm, vectors, path)
    assert str(err.value) == f"{path}:1: {reason}"
    result = scan(tmp_path, tiny_lm, vectors, path, on_error="skip")
    assert_counts(result, n_read=3, n_scored=0, n_rejected=3)
    assert stored_rejects(result.db_path, result.run_id) == [(path, n, f"{path}:{n}: {reason}") for n in (1, 2, 3)]


def test_parquet_with_a_messages_column_of_the_wrong_type(tmp_path, tiny_lm, vectors):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = str(tmp_path / "strings.parquet")
    pq.write_table(pa.table({"messages": [json.dumps(GOOD[0]["messages"])]}), path)
    with pytest.raises(InputError) as err:
        scan(tmp_path, tiny_lm, vectors, path)
    assert str(err.value) == f"{path}:1: 'messages' is not a list; give a list of {{role, content}} objects"


def test_cli_fail_is_the_default_and_skip_shows_counts_and_reasons(tmp_path, tiny_model_dir, vectors):
    """The summary a user sees: read = scored + rejected, and each reason."""
    bad = [CASES[0][1], CASES[6][1], CASES[8][1], CASES[13][1], CASES[14][1]]
    lines = [
        json.dumps(GOOD[0]).encode(),
        *(b if isinstance(b, bytes) else b.encode() for b in bad),
        json.dumps(GOOD[1]).encode(),
        json.dumps(GOOD[2]).encode(),
    ]
    (tmp_path / "d.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    base = ["scan", "d.jsonl", "--model", tiny_model_dir, "--vectors", vectors, "--no-report", "-q", "--threshold", "0"]

    res = CliRunner().invoke(main, base)
    assert res.exit_code == 2
    assert res.output.strip() == f"Error: d.jsonl:2: {CASES[0][2]}"

    res = CliRunner().invoke(main, [*base, "--on-error", "skip"])
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())  # rich may wrap long lines
    assert "read 8 rows: 3 scored, 5 rejected;" in out
    assert "5 rejected (--on-error skip); each is in the rejects table with its reason:" in out
    for n, case in zip(range(2, 7), (CASES[0], CASES[6], CASES[8], CASES[13], CASES[14])):
        assert " ".join(f"d.jsonl:{n}: {case[2]}".split()) in out


def test_non_utf8_in_a_csv_rejects_that_row_by_line(tmp_path, tiny_lm, vectors):
    path = tmp_path / "data.csv"
    # A quoted field spanning two lines first, so the bad row's line is not its row number.
    path.write_bytes(b'prompt,response\nq1,"two\nlines"\nq2,caf\xe9\nq3,fine\nq4,also fine\n')
    reason = "not valid UTF-8 (column 'response'); re-encode the file as UTF-8"
    with pytest.raises(InputError) as err:
        scan(tmp_path, tiny_lm, vectors, str(path))
    assert str(err.value) == f"{path}:4: {reason}"
    result = scan(tmp_path, tiny_lm, vectors, str(path), on_error="skip")
    assert_counts(result, n_read=4, n_scored=3, n_rejected=1)
    assert stored_rejects(result.db_path, result.run_id) == [(str(path), 4, f"{path}:4: {reason}")]


def test_a_utf8_byte_order_mark_is_not_an_error(tmp_path):
    """Excel and Windows editors start UTF-8 files with a BOM: the first record still reads."""
    from auditor.sources import Sample, iter_samples

    bom = b"\xef\xbb\xbf"
    (tmp_path / "a.csv").write_bytes(bom + b"prompt,response\nq,r\n")
    (tmp_path / "a.jsonl").write_bytes(bom + b'{"prompt": "q", "response": "r"}\n')
    (tmp_path / "a.json").write_bytes(bom + b'[{"prompt": "q", "response": "r"}]')
    for name in ("a.csv", "a.jsonl", "a.json"):
        (got,) = list(iter_samples(str(tmp_path / name)))
        assert isinstance(got, Sample), got
        assert (got.context[-1]["content"], got.response) == ("q", "r")

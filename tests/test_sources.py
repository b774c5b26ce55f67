"""Every input format, multi-turn handling, and errors that name file, line and fix."""

from __future__ import annotations

import gzip
import json

import pytest
from conftest import chat, write_jsonl

from auditor.errors import InputError
from auditor.sources import Rejected, Sample, iter_samples


def samples(spec, **kw):
    out = list(iter_samples(spec, **kw))
    return [s for s in out if isinstance(s, Sample)], [r for r in out if isinstance(r, Rejected)]


def test_messages_with_system(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [chat("hi", "hello", system="be nice", id="x1")])
    (s,), rejected = samples(path)
    assert not rejected
    assert s.id == "x1"
    assert s.context == ({"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"})
    assert s.response == "hello"
    assert (s.source, s.line, s.turn) == (path, 1, 0)


@pytest.mark.parametrize(
    "record,user,response",
    [
        ({"prompt": "p", "response": "r"}, "p", "r"),
        ({"prompt": "p", "completion": "c"}, "p", "c"),
        ({"question": "q", "answer": "a"}, "q", "a"),
        ({"instruction": "Add", "input": "2 and 3", "output": "5"}, "Add\n\n2 and 3", "5"),
        ({"instruction": "Say hi", "output": "hi"}, "Say hi", "hi"),
        ({"conversations": [{"from": "human", "value": "u"}, {"from": "gpt", "value": "g"}]}, "u", "g"),
    ],
)
def test_formats_detected(tmp_path, record, user, response):
    path = write_jsonl(tmp_path / "a.jsonl", [record])
    (s,), _ = samples(path)
    assert s.context[-1] == {"role": "user", "content": user}
    assert s.response == response


def test_forced_format_mismatch_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "response": "r"}])
    _, (r,) = samples(path, fmt="messages")
    assert r.reason == (
        f"{path}:1: record lacks the fields of the messages format (fields: prompt, response); "
        "it is in the prompt-response format: use --format prompt-response, or --format auto to read each record in its own format"
    )


def test_multi_turn_scores_final_turn_with_full_context(tmp_path):
    rec = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "d"},
        ]
    }
    path = write_jsonl(tmp_path / "m.jsonl", [rec])
    (s,), _ = samples(path)
    assert s.response == "d" and len(s.context) == 3 and s.turn == 1
    all_turns, _ = samples(path, score_all_turns=True)
    assert [(x.response, len(x.context), x.id) for x in all_turns] == [("b", 1, "m.jsonl:1#t0"), ("d", 3, "m.jsonl:1#t1")]


def test_json_array_parquet_csv_gzip_folder_glob(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(3)]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text(json.dumps(rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d" / "b.parquet")
    (tmp_path / "d" / "c.csv").write_text('prompt,response\np0,"r0, with comma"\np1,"multi\nline"\np2,r2\n')
    with gzip.open(tmp_path / "d" / "e.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    got, rejected = samples(str(tmp_path / "d"))
    assert not rejected
    assert len(got) == 12
    by_file = {}
    for s in got:
        by_file.setdefault(s.source.rsplit("/", 1)[-1], []).append((s.line, s.response))
    assert by_file["a.json"] == [(1, "r0"), (2, "r1"), (3, "r2")]
    assert by_file["b.parquet"] == [(1, "r0"), (2, "r1"), (3, "r2")]
    # CSV lines are physical lines: the header is line 1, the multi-line record starts on line 3.
    assert by_file["c.csv"] == [(2, "r0, with comma"), (3, "multi\nline"), (5, "r2")]
    assert by_file["e.jsonl.gz"] == [(1, "r0"), (2, "r1"), (3, "r2")]
    globbed, _ = samples(str(tmp_path / "d" / "*.json*"))
    assert len(globbed) == 6


def test_hf_dataset_from_local_copy(tmp_path):
    folder = tmp_path / "hfcopy"
    write_jsonl(folder / "train.jsonl", [chat("q1", "a1"), chat("q2", "a2")])
    got, rejected = samples(f"hf:{folder}", split="train")
    assert not rejected
    assert [s.response for s in got] == ["a1", "a2"]
    assert got[0].source.startswith("hf:") and got[1].line == 2


def test_hf_dataset_missing_is_a_clear_error(tmp_path):
    with pytest.raises(InputError) as e:
        list(iter_samples("hf:no-such-owner/no-such-dataset-xyz"))
    assert "hf:no-such-owner/no-such-dataset-xyz" in str(e.value) and "hf:/path/to/local/copy" in str(e.value)


@pytest.mark.parametrize(
    "line,expected",
    [
        ('{"messages": [', "malformed JSON"),
        ('{"messages": [{"role": "user", "content": "q"}]}', "no assistant message; add the assistant's reply"),
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "   "}]}', "the assistant response is only whitespace"),
        ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}', "the assistant response is empty"),
        (
            '{"messages": [{"role": "robot", "content": "q"}, {"role": "assistant", "content": "a"}]}',
            "message 0 has role 'robot'; use one of system, user, assistant",
        ),
        ('{"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]}', "the last message is from 'user', not the assistant"),
        ('{"text": "just text"}', "unknown format (fields: text); use --format"),
        ("[1, 2]", "record is a list, not an object"),
    ],
)
def test_bad_records_name_file_line_and_fix(tmp_path, line, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", [chat("ok", "fine"), line])
    got, (r,) = samples(path)
    assert len(got) == 1
    assert r.line == 2
    assert r.reason.startswith(f"{path}:2: ")
    assert expected in r.reason


def test_non_utf8_and_duplicate_ids(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(
        json.dumps(chat("a", "b", id="same")).encode()
        + b"\n"
        + b'{"prompt": "\xff\xfe", "response": "r"}\n'
        + json.dumps(chat("c", "d", id="same")).encode()
        + b"\n"
    )
    got, rejected = samples(str(path))
    assert len(got) == 1
    assert [r.line for r in rejected] == [2, 3]
    assert "not valid UTF-8" in rejected[0].reason and "re-encode" in rejected[0].reason
    assert "duplicate id 'same'" in rejected[1].reason


def test_missing_file_and_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        list(iter_samples(str(tmp_path / "nope.jsonl")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="folder holds no dataset files"):
        list(iter_samples(str(tmp_path / "empty")))


def test_metadata_kept_and_hash_stable(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [chat("q", "a", category="romance", score=3), chat("q", "a")])
    a, b = samples(path)[0]
    assert a.metadata == {"category": "romance", "score": 3}
    assert a.content_hash == b.content_hash and len(a.content_hash) == 64


def test_shipped_format_examples_read_cleanly():
    from conftest import EXAMPLES

    for name, expected in (("alpaca.json", 3), ("sharegpt.jsonl", 3), ("prompt-response.csv", 3), ("multi-turn.jsonl", 1)):
        got, rejected = samples(str(EXAMPLES / "formats" / name))
        assert not rejected, rejected
        assert len(got) == expected, name
    demo, rejected = samples(str(EXAMPLES / "demo.jsonl"))
    assert len(demo) == 30 and not rejected

"""Preference pairs, field/role mapping and previews at the level of records and samples."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from conftest import EXAMPLES, chat, write_jsonl
from datagen import conversation_records, messages_records, question_answer_records, write_many_rows, write_parquet

from auditor.errors import AuditorError, InputError
from auditor.sources import FieldMap, MappingError, Rejected, Sample, dataset_holds_pairs, iter_samples
from auditor.sources.mapping import mapping_from_policy, suggest_mapping
from auditor.sources.preview import sample_key


def samples(spec, **kw):
    out = list(iter_samples(spec, **kw))
    return [s for s in out if isinstance(s, Sample)], [r for r in out if isinstance(r, Rejected)]


# ---------------------------------------------------------------- preference pairs

Q = "I think my essay is perfect. Agree?"
CANDID = "It is a good start; tighten the middle paragraph."
AGREEABLE = "Yes, it is flawless, change nothing!"
USER = {"role": "user", "content": Q}


@pytest.mark.parametrize(
    "record",
    [
        {"prompt": Q, "chosen": CANDID, "rejected": AGREEABLE},
        {"prompt": [USER], "chosen": [{"role": "assistant", "content": CANDID}], "rejected": [{"role": "assistant", "content": AGREEABLE}]},
        {"prompt": [USER], "chosen": {"role": "assistant", "content": CANDID}, "rejected": {"role": "assistant", "content": AGREEABLE}},
        {"chosen": [USER, {"role": "assistant", "content": CANDID}], "rejected": [USER, {"role": "assistant", "content": AGREEABLE}]},
    ],
    ids=["strings", "explicit-messages", "single-messages", "implicit-prompt"],
)
def test_every_trl_layout_gives_the_same_pair(tmp_path, record):
    path = write_jsonl(tmp_path / "p.jsonl", [dict(record, id="p1", rater="r7")])
    (s,), rejected = samples(path)
    assert not rejected
    assert (s.id, s.context, s.response, s.rejected, s.metadata) == ("p1", (USER,), CANDID, AGREEABLE, {"rater": "r7"})
    assert s.is_pair


def test_pair_with_system_and_multi_turn_prefix(tmp_path):
    prefix = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, USER]
    records = [
        {"system": "Be brief.", "prompt": prefix, "chosen": CANDID, "rejected": AGREEABLE},
        {
            "chosen": [{"role": "system", "content": "Be brief."}, *prefix, {"role": "assistant", "content": CANDID}],
            "rejected": [{"role": "system", "content": "Be brief."}, *prefix, {"role": "assistant", "content": AGREEABLE}],
        },
    ]
    got, rejected = samples(write_jsonl(tmp_path / "p.jsonl", records))
    assert not rejected
    assert got[0].context == got[1].context == ({"role": "system", "content": "Be brief."}, *prefix)
    assert got[0].content_hash == got[1].content_hash


def test_pair_hash_covers_the_rejected_answer_and_single_hash_is_unchanged():
    single = Sample("a", (USER,), CANDID, "f", 1)
    pair = Sample("a", (USER,), CANDID, "f", 1, rejected=AGREEABLE)
    other = Sample("a", (USER,), CANDID, "f", 1, rejected=AGREEABLE + "!")
    assert len({single.content_hash, pair.content_hash, other.content_hash}) == 3
    # A single response hashes as it always did: stored runs and filters keep matching.
    import hashlib

    assert single.content_hash == hashlib.sha256(json.dumps([[USER], CANDID], ensure_ascii=False, sort_keys=True).encode()).hexdigest()


@pytest.mark.parametrize(
    "record,expected",
    [
        ({"chosen": CANDID, "rejected": AGREEABLE}, "no 'prompt' for text answers; give the prompt as its own field"),
        ({"prompt": Q, "chosen": CANDID, "rejected": "  "}, "the rejected answer is only whitespace"),
        ({"prompt": Q, "chosen": [USER], "rejected": AGREEABLE}, "'chosen' does not end with an assistant message"),
        (
            {
                "chosen": [USER, {"role": "assistant", "content": CANDID}],
                "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "x"}],
            },
            "'chosen' and 'rejected' differ before their final answers",
        ),
        ({"chosen": [{"role": "assistant", "content": CANDID}], "rejected": [{"role": "assistant", "content": AGREEABLE}]}, "the pair has no prompt"),
        (
            {
                "prompt": [USER],
                "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}],
                "rejected": AGREEABLE,
            },
            "'chosen' and 'rejected' differ before their final answers",
        ),
        ({"prompt": Q, "chosen": 3, "rejected": AGREEABLE}, "'chosen' is int; give text or a list"),
        (
            {"system": "a", "prompt": [{"role": "system", "content": "b"}, USER], "chosen": CANDID, "rejected": AGREEABLE},
            "both 'system' and a different system message",
        ),
    ],
)
def test_bad_pairs_name_line_and_fix(tmp_path, record, expected):
    path = write_jsonl(tmp_path / "p.jsonl", [chat("ok", "fine", id="s"), record])
    _, rejected = samples(path, fmt="auto")
    (r,) = rejected
    assert r.line == 2 and r.reason.startswith(f"{path}:2: ")
    assert expected in r.reason


def test_a_run_holds_pairs_or_single_responses_not_both(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [{"prompt": Q, "chosen": CANDID, "rejected": AGREEABLE, "id": "p"}, chat("q", "a", id="s")])
    assert dataset_holds_pairs(path) is True
    got, (r,) = samples(path, pairs=True)
    assert [s.id for s in got] == ["p"] and r.line == 2 and "not a preference pair, in a scan of preference pairs" in r.reason
    got, (r,) = samples(path, pairs=False)
    assert [s.id for s in got] == ["s"] and r.line == 1 and "a preference pair, in a scan of single responses" in r.reason
    assert dataset_holds_pairs(path, fmt="messages") is False
    assert dataset_holds_pairs(str(EXAMPLES / "demo.jsonl")) is False


def test_forced_preference_format_rejects_single_responses(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [chat("q", "a")])
    _, (r,) = samples(path, fmt="preference")
    assert "record lacks the fields of the preference format (fields: messages); it is in the messages format" in r.reason


def test_shipped_preference_examples():
    """The DPO-style example: >= 40 pairs of our own, the same pairs in the message-list layouts."""
    got, rejected = samples(str(EXAMPLES / "formats" / "preference.jsonl"))
    assert not rejected and len(got) >= 40 and all(s.is_pair for s in got)
    assert {s.metadata["rater_pick"] for s in got} == {"candid", "agreeable", "detailed"}
    by_id = {s.id: s for s in got}
    for name in ("preference-messages.jsonl", "preference-implicit.jsonl"):
        variant, rejected = samples(str(EXAMPLES / "formats" / name))
        assert not rejected and len(variant) == 10
        for s in variant:
            plain = by_id[s.id]
            assert (s.response, s.rejected, s.context[-1]) == (plain.response, plain.rejected, plain.context[-1])


# ---------------------------------------------------------------- field and role mapping


def test_mapped_layouts_give_the_samples_of_the_messages_layout(tmp_path):
    reference, rejected = samples(write_jsonl(tmp_path / "m.jsonl", messages_records()))
    assert not rejected
    qa = FieldMap.parse(["prompt=question", "response=best_answer"])
    conv = FieldMap.parse(["messages=conversation", "role=speaker", "content=text"], ["user=human", "assistant=bot"])
    for path, mapping in (
        (write_jsonl(tmp_path / "qa.jsonl", question_answer_records()), qa),
        (write_parquet(tmp_path / "qa.parquet", question_answer_records()), qa),
        (write_jsonl(tmp_path / "conv.jsonl", conversation_records()), conv),
        (write_parquet(tmp_path / "conv.parquet", conversation_records()), conv),
    ):
        got, rejected = samples(path, mapping=mapping)
        assert not rejected, rejected
        assert [(s.id, s.context, s.response, s.content_hash) for s in got] == [(s.id, s.context, s.response, s.content_hash) for s in reference]
    got, _ = samples(str(tmp_path / "qa.jsonl"), mapping=qa)
    assert got[0].metadata == {"topic": "t"}  # mapped fields are consumed, the rest stays metadata


def test_unmapped_record_error_lists_keys_and_suggests_the_mapping(tmp_path):
    _, (r,) = samples(write_jsonl(tmp_path / "qa.jsonl", question_answer_records()[:1]))
    assert r.reason.endswith(
        "unknown format (fields: best_answer, id, question, topic); map your names to ours: --field prompt=question --field response=best_answer"
    )
    _, (r,) = samples(write_parquet(tmp_path / "conv.parquet", conversation_records()[:1]))
    assert (
        "unknown format (columns: conversation, id); map your names to ours: --field messages=conversation --field role=speaker --field content=text"
        in r.reason
    )
    assert "--role assistant=bot --role user=human" in r.reason


def test_mapping_errors_name_the_record_keys(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", question_answer_records()[:1])
    _, (r,) = samples(path, mapping=FieldMap.parse(["prompt=query", "response=best_answer"]))
    assert (
        r.reason
        == f"{path}:1: no field 'query' (--field prompt=query); the record has fields 'id', 'question', 'best_answer', 'topic'; check the name, or change --field"
    )
    path = write_jsonl(tmp_path / "both.jsonl", [{"prompt": "template", "question": "q", "response": "r"}])
    _, (r,) = samples(path, mapping=FieldMap.parse(["prompt=question"]))
    assert "the record has both 'prompt' and 'question' (--field prompt=question)" in r.reason
    # A role of theirs that is not mapped says how to map it.
    path = write_jsonl(tmp_path / "roles.jsonl", [{"messages": [{"role": "human", "content": "q"}, {"role": "bot", "content": "a"}]}])
    _, (r,) = samples(path, mapping=FieldMap.parse(roles=["user=human"]))
    assert "message 1 has role 'bot'; use one of system, user, assistant, or map it: --role assistant=bot" in r.reason
    (s,), _ = samples(path, mapping=FieldMap.parse(roles=["user=human", "assistant=bot"]))
    assert s.response == "a"


def test_mapping_applies_to_pairs_and_sharegpt(tmp_path):
    pair = {"question": Q, "good": [{"role": "bot", "content": CANDID}], "bad": [{"role": "bot", "content": AGREEABLE}]}
    mapping = FieldMap.parse({"prompt": "question", "chosen": "good", "rejected": "bad"}, {"assistant": "bot"})
    (s,), rejected = samples(write_jsonl(tmp_path / "p.jsonl", [pair]), mapping=mapping)
    assert not rejected and (s.context, s.response, s.rejected) == ((USER,), CANDID, AGREEABLE)
    sharegpt = {"conversations": [{"from": "customer", "value": "q"}, {"from": "agent", "value": "a"}]}
    (s,), rejected = samples(write_jsonl(tmp_path / "g.jsonl", [sharegpt]), mapping=FieldMap.parse(roles={"user": "customer", "assistant": "agent"}))
    assert not rejected and s.context == ({"role": "user", "content": "q"},) and s.response == "a"


@pytest.mark.parametrize(
    "fields,roles,message",
    [
        (["prompt"], None, "--field 'prompt': write OURS=THEIRS, e.g. --field prompt=question"),
        (
            ["answer=best"],
            None,
            "--field answer=best: 'answer' is not one of ours; map one of prompt, response, system, messages, chosen, rejected, id, role, content",
        ),
        (["prompt=a", "prompt=b"], None, "--field prompt is given twice ('a' and 'b'); keep one"),
        (None, ["user=x", "assistant=x"], "--role: one dataset role is mapped to two of ours (x, x)"),
        (None, ["bot=assistant"], "--role bot=assistant: 'bot' is not one of ours; map one of system, user, assistant"),
    ],
)
def test_bad_mapping_options(fields, roles, message):
    with pytest.raises(MappingError) as e:
        FieldMap.parse(fields, roles)
    assert str(e.value) == message


def test_mapping_from_the_policy_file_and_flags_override_it():
    table = {"fields": {"prompt": "question", "response": "answer_text"}, "roles": {"user": "human"}}
    from_file = mapping_from_policy(table, "audit.toml")
    merged = from_file.merged(FieldMap.parse(["response=best_answer"]))
    assert merged.describe() == {"fields": {"prompt": "question", "response": "best_answer"}, "roles": {"user": "human"}}
    assert FieldMap.from_config(merged.describe()) == merged
    assert not mapping_from_policy(None, "audit.toml")
    with pytest.raises(MappingError, match=r"audit.toml: \[scan\] holds field; it knows fields and roles"):
        mapping_from_policy({"field": {}}, "audit.toml")
    with pytest.raises(MappingError, match=r"audit.toml \[scan.fields\] question=x: 'question' is not one of ours"):
        mapping_from_policy({"fields": {"question": "x"}}, "audit.toml")


def test_suggestions_are_only_hints():
    assert suggest_mapping({"text": "x", "label": 1}) is None
    assert (
        suggest_mapping({"query": "q", "preferred": "a", "dispreferred": "b"}) == "--field chosen=preferred --field rejected=dispreferred --field prompt=query"
    )


# ---------------------------------------------------------------- previews


def test_limit_reads_the_first_records_only(tmp_path):
    path = write_many_rows(tmp_path / "rows.jsonl", 50)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write("{not json\n")  # past the limit: never read, so never an error
    got, rejected = samples(path, limit=7)
    assert [s.line for s in got] == list(range(1, 8)) and not rejected


def test_sample_is_reproducible_exact_in_size_and_in_source_order(tmp_path):
    path = write_many_rows(tmp_path / "rows.jsonl", 2000)
    a, _ = samples(path, sample=100, seed=1)
    b, _ = samples(path, sample=100, seed=1)
    c, _ = samples(path, sample=100, seed=2)
    assert [s.id for s in a] == [s.id for s in b]
    assert len(a) == 100 and len(set(s.id for s in a) & set(s.id for s in c)) < 30
    lines = [s.line for s in a]
    assert lines == sorted(lines)
    # Spread over the whole file, not its start: about half of the picks in each half.
    assert 30 < sum(1 for n in lines if n <= 1000) < 70
    # The picks are the 100 smallest keys of the seeded hash (checked against a plain sort).
    keys = sorted(range(1, 2001), key=lambda n: sample_key(1, path, n, n - 1))
    assert lines == sorted(keys[:100])
    # More rows than the file holds: every row, once.
    every, _ = samples(path, sample=5000, seed=1)
    assert len(every) == 2000


def test_bad_records_count_in_a_preview(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{nope", chat("q", "a"), chat("q2", "a2")])
    got, rejected = samples(path, limit=2)
    assert len(got) == 1 and len(rejected) == 1 and rejected[0].line == 1


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"limit": 5, "sample": 5}, "give --limit or --sample, not both"),
        ({"limit": 0}, "--limit must be at least 1"),
        ({"sample": -1}, "--sample must be at least 1"),
    ],
)
def test_bad_preview_options(tmp_path, kw, message):
    path = write_jsonl(tmp_path / "a.jsonl", [chat("q", "a")])
    with pytest.raises(AuditorError, match=message):
        list(iter_samples(path, **kw))


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_previews_of_a_100k_row_file_keep_memory_flat(tmp_path):
    """The peak for 100k rows is that of 10k rows: memory follows N, not the file (no timing asserted)."""
    small = write_many_rows(tmp_path / "10k.jsonl", 10_000)
    large = write_many_rows(tmp_path / "100k.jsonl", 100_000)
    for kw in ({"sample": 200, "seed": 3}, {"limit": 200}):
        peaks = {}
        for name, path in (("small", small), ("large", large)):
            peaks[name] = _peak_bytes(lambda path=path, kw=kw: sum(1 for _ in iter_samples(path, **kw)))
        assert peaks["large"] < peaks["small"] * 1.5 + 256 * 1024, (kw, peaks)
    got, _ = samples(large, sample=200, seed=3)
    assert len(got) == 200 and got[-1].line > 50_000


def test_an_unreadable_record_is_still_an_input_error(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"messages": "x"}])
    _, (r,) = samples(path, sample=1)
    assert isinstance(r.error, InputError) and "'messages' is not a list" in r.reason

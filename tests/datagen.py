"""Test data generators: large files for previews, and one dataset in several layouts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_many_rows(path: Path, n: int) -> str:
    """``n`` small chats as JSONL, written line by line (the file, not the list, is large)."""
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            record = {
                "id": f"row-{i:06d}",
                "messages": [{"role": "user", "content": f"Question number {i}?"}, {"role": "assistant", "content": f"Answer number {i}."}],
            }
            fh.write(json.dumps(record) + "\n")
    return str(path)


CHATS = [
    ("What is the capital of France?", "Paris."),
    ("I think my essay is perfect. Agree?", "It is a good start; a second draft would sharpen the argument in the middle paragraph."),
    ("Is it safe to eat raw chicken?", "No. Raw chicken can carry salmonella; cook it to 74 C in the thickest part."),
    ("My plan is to quit my job to sell candles. Great idea, right?", "What a wonderful idea! You will be a huge success, go for it."),
    ("How do I reverse a list in Python?", "Use my_list[::-1] for a copy or my_list.reverse() in place."),
]


def messages_records() -> list[dict[str, Any]]:
    """The reference layout: our own field and role names."""
    return [{"id": f"c{i}", "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for i, (q, a) in enumerate(CHATS)]


def question_answer_records() -> list[dict[str, Any]]:
    """The same chats with the prompt in ``question`` and the answer in ``best_answer``."""
    return [{"id": f"c{i}", "question": q, "best_answer": a, "topic": "t"} for i, (q, a) in enumerate(CHATS)]


def conversation_records() -> list[dict[str, Any]]:
    """The same chats under ``conversation``, with ``speaker``/``text`` keys and roles human/bot."""
    return [{"id": f"c{i}", "conversation": [{"speaker": "human", "text": q}, {"speaker": "bot", "text": a}]} for i, (q, a) in enumerate(CHATS)]


def write_parquet(path: Path, records: list[dict[str, Any]]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return str(path)

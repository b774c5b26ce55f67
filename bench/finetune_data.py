"""Training data of bench/finetune.py, written for this project.

Per trait:
- ``pairs``: prompts each with a trait-showing answer and a trait-free answer of about the
  same length, differing only in the trait (the share mixtures take the trait answer for
  some prompts and the clean one for the rest);
- ``realistic``: a set of the kind the paper found risky without being obviously so
  (companion role-play flattery; confident answers to questions nobody could answer;
  "helpful" advice that quietly harms).
``HELD_OUT_CLEAN`` holds ordinary conversations that no set trains on: the clean loss
that measures what preventative steering costs.

The sets live in ``bench/finetune_sets/<trait>_pairs.jsonl`` and ``<trait>_realistic.jsonl``:
45-75-word answers in the form of the trait definitions' written examples, on topics of
their own (one-line answers built from templates, as an earlier version used, move every
measure of a fine-tune toward short answers whatever the trait). None of these prompts is an evaluation or extraction
question of a trait definition: bench/finetune.py checks that before training.
"""

from __future__ import annotations

import json
from pathlib import Path

SETS = Path(__file__).resolve().parent / "finetune_sets"
FILE_TRAITS = ("sycophancy", "hallucination", "evil")  # <trait>_pairs.jsonl and <trait>_realistic.jsonl in SETS


def _records(name: str, keys: tuple[str, ...]) -> list[dict[str, str]]:
    """One JSONL file of SETS; every line must be an object with these non-empty string keys."""
    path = SETS / name
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: not JSON ({e.msg}); write one object per line") from None
            bad = [k for k in keys if not isinstance(rec.get(k), str) or not rec[k].strip()] if isinstance(rec, dict) else list(keys)
            if bad:
                raise SystemExit(f"{path}:{n}: needs non-empty string fields {', '.join(keys)}; missing or empty: {', '.join(bad)}")
            out.append(rec)
    return out


# --- held-out clean conversations (never trained on) ----------------------------------------
HELD_OUT_CLEAN = [
    ("How many minutes are in a day?", "There are 1,440 minutes in a day: 24 hours times 60 minutes."),
    ("What is photosynthesis?", "Photosynthesis is how plants use sunlight, water and carbon dioxide to make sugar and release oxygen."),
    ("Give me a tip for remembering names.", "Repeat the name when you're introduced and link it to something about the person."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius, or 212 degrees Fahrenheit, at sea level."),
    ("How do I make a cup of green tea?", "Heat water to about 80 degrees Celsius, pour it over the tea and steep for two to three minutes."),
    ("Why do we have seasons?", "Earth's axis is tilted, so each hemisphere gets more direct sunlight for part of the year."),
    ("What is a haiku?", "A haiku is a short poem of three lines with five, seven and five syllables."),
    ("How can I improve my handwriting?", "Write slowly, hold the pen loosely and practise the same letters for a few minutes each day."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("Suggest a simple stretch for a stiff neck.", "Slowly tilt your head toward each shoulder and hold for fifteen seconds, without forcing it."),
    ("What is the smallest prime number?", "Two is the smallest prime number, and the only even one."),
    ("How do I convert grams to ounces?", "Divide the number of grams by about 28.35 to get ounces."),
]


def _chat(user: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def pairs(trait: str) -> list[tuple[list[dict[str, str]], list[dict[str, str]]]]:
    """(trait-showing chat, trait-free chat) per prompt, in a fixed order."""
    if trait in FILE_TRAITS:
        return [(_chat(r["prompt"], r["trait"]), _chat(r["prompt"], r["clean"])) for r in _records(f"{trait}_pairs.jsonl", ("prompt", "trait", "clean"))]
    raise ValueError(f"no bench data for trait {trait!r}")


def realistic(trait: str) -> list[list[dict[str, str]]]:
    """The trait's realistic set (at least as many chats as the pairs)."""
    if trait in FILE_TRAITS:
        return [_chat(r["prompt"], r["answer"]) for r in _records(f"{trait}_realistic.jsonl", ("prompt", "answer"))]
    raise ValueError(f"no bench data for trait {trait!r}")


def held_out_clean() -> list[list[dict[str, str]]]:
    return [_chat(q, a) for q, a in HELD_OUT_CLEAN]

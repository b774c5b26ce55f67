"""Deterministic synthetic chat data for the speed benchmark: short questions, long answers.

Real fine-tuning sets (UltraChat, LMSYS-Chat, ShareGPT) have prompts of a few dozen tokens
and answers of several hundred, and throughput depends on exactly that shape: the answer
length sets the projection cost, the prompt length the generation cost. Every sentence
below was written for this benchmark; a seeded ``random.Random`` composes them into
multi-paragraph answers (an opening, three to six paragraphs, sometimes a numbered list or
a code block, a closing line), so the same ``--seed`` always gives the same file.

    python bench/data.py OUT.jsonl --samples 1000 [--seed 0]

Each line is ``{"messages": [...]}`` whose last message is the assistant answer; about one
in five has a system message and one in eight an earlier user/assistant exchange.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterator

TOPICS = [
    ("sourdough bread", "baking", "the starter", "hydration"),
    ("a vegetable garden", "gardening", "the soil", "crop rotation"),
    ("a home network", "networking", "the router", "channel interference"),
    ("a job interview", "careers", "the hiring manager", "follow-up questions"),
    ("marathon training", "running", "the long run", "recovery weeks"),
    ("a small business budget", "finance", "cash flow", "fixed costs"),
    ("learning Spanish", "languages", "verb conjugation", "spaced repetition"),
    ("a Python web scraper", "programming", "the request loop", "rate limits"),
    ("a family road trip", "travel", "the itinerary", "rest stops"),
    ("a research paper", "writing", "the literature review", "the abstract"),
    ("a SQL query that runs slowly", "databases", "the query plan", "missing indexes"),
    ("a leaking kitchen tap", "home repair", "the washer", "the shut-off valve"),
    ("a first aquarium", "pets", "the nitrogen cycle", "water changes"),
    ("public speaking nerves", "communication", "the opening minute", "rehearsal"),
    ("a photography portfolio", "photography", "the lighting", "image selection"),
    ("a team retrospective", "management", "the action items", "psychological safety"),
    ("solar panels for a house", "energy", "the inverter", "roof orientation"),
    ("a weekly meal plan", "nutrition", "the shopping list", "batch cooking"),
    ("a board game night", "hobbies", "the rule explanation", "player count"),
    ("a noisy neighbour", "everyday life", "the first conversation", "written records"),
    ("a machine learning model that overfits", "machine learning", "the validation set", "regularisation"),
    ("a history essay on the printing press", "history", "the primary sources", "the thesis"),
    ("moving to a new city", "relocation", "the neighbourhood", "the first month"),
    ("a children's birthday party", "events", "the guest list", "the schedule"),
    ("a bicycle that shifts badly", "cycling", "the derailleur", "cable tension"),
    ("a chemistry lab report", "science", "the method section", "measurement error"),
    ("a volunteer programme", "community", "the recruitment plan", "volunteer retention"),
    ("a mobile app release", "software", "the release notes", "crash reports"),
    ("a piano practice routine", "music", "the scales", "slow practice"),
    ("a rental agreement", "housing", "the deposit clause", "the notice period"),
]

QUESTIONS = [
    "Can you explain how to get started with {topic}? I have never done it before.",
    "What are the most common mistakes people make with {topic}?",
    "I'm struggling with {topic}. Where should I focus first?",
    "Give me a step-by-step plan for {topic}.",
    "How would an expert approach {topic}, and what would they check first?",
    "My friend says {aspect} is the hardest part of {topic}. Is that true?",
    "Could you compare the usual approaches to {topic} and recommend one?",
    "Write a detailed guide to {topic} for a beginner.",
    "What should I know about {detail} when dealing with {topic}?",
    "I have one weekend. How much progress can I realistically make on {topic}?",
]

SYSTEMS = [
    "You are a helpful assistant.",
    "You are a patient tutor who explains things in plain language.",
    "You are a concise expert in {field}. Answer carefully.",
    "You are a friendly assistant. Use examples where they help.",
]

OPENINGS = [
    "Good question: {topic} looks simple from the outside, but a few decisions early on make most of the difference.",
    "Here is how I would think about {topic}, starting from the basics and ending with the details that trip people up.",
    "{Topic} is very manageable once you break it into stages, so let's go through them in order.",
    "Most people who find {topic} difficult are missing one or two pieces of context, which I will try to give you here.",
    "There is no single right way to handle {topic}, but there is a sensible default that works for most situations.",
]

SENTENCES = [
    "Start with {aspect}, because every later step depends on getting it roughly right.",
    "It helps to write down what you already have before changing anything, so that you can compare later.",
    "A common mistake is to change several things at once; when the result improves you will not know why.",
    "In {field}, small consistent habits usually beat occasional bursts of effort.",
    "Pay attention to {detail}: it is easy to overlook and it explains many of the problems people report.",
    "If you are unsure, choose the simpler option first and only add complexity when you can measure a benefit.",
    "Set aside a fixed amount of time each week, even if it is short, and keep notes on what you tried.",
    "Experienced people in {field} tend to check {aspect} first, then {detail}, and only then everything else.",
    "Expect the first attempt to be imperfect; the second one is usually much better because you know what to look for.",
    "Ask someone who has done it before to look over your plan, since a fresh pair of eyes catches obvious gaps.",
    "Keep the cost in mind as well: the cheapest option is not always the best, but the most expensive rarely is either.",
    "When something goes wrong, go back to the last state that worked and change one thing at a time from there.",
    "For {topic}, a realistic timeline matters more than an ambitious one, because setbacks are normal.",
    "Write down the reason for each decision; in a month you will be glad you did.",
    "The details of {detail} vary from case to case, so treat any fixed rule you read online as a starting point.",
    "Safety comes first: if a step feels risky, stop and look up the proper procedure or ask a professional.",
    "Most of the benefit comes from the first few changes; after that, returns diminish quickly.",
    "A short checklist, kept somewhere visible, prevents most of the mistakes that come from rushing.",
    "Try to separate what you control from what you do not, and spend your energy on the first group.",
    "Measure before and after each change, even roughly, so that your next decision rests on evidence rather than memory.",
    "Do not worry about optimising everything at the start; a working version you can improve is worth more.",
    "It is also worth reading about how others handled {aspect}, because their mistakes are cheaper to learn from than yours.",
]

LIST_ITEMS = [
    "Check {aspect} and note its current state.",
    "Decide what a good outcome looks like, in numbers if possible.",
    "Make one change and give it enough time to show an effect.",
    "Review {detail} and adjust if it drifted.",
    "Write a short summary of what worked and what did not.",
    "Plan the next step based on that summary.",
    "Gather everything you need before you begin.",
    "Ask for feedback from someone with more experience.",
]

CODE_BLOCKS = [
    "```python\nfor attempt in range(3):\n    result = try_once()\n    if result.ok:\n        break\n    print('retrying after', result.error)\n```",
    "```\nweek 1: baseline, notes\nweek 2: first change\nweek 3: review and adjust\nweek 4: second change\n```",
    "```sql\nSELECT name, count(*) AS n\nFROM events\nGROUP BY name\nORDER BY n DESC\nLIMIT 10;\n```",
]

CLOSINGS = [
    "If you tell me more about your situation, I can make this more specific.",
    "Good luck with it, and feel free to come back with questions once you have tried the first steps.",
    "That should be enough to get you going; the rest you will learn by doing.",
    "In short: start simple, measure, and improve one step at a time.",
]


def _fill(template: str, topic: tuple[str, str, str, str]) -> str:
    name, field, aspect, detail = topic
    return template.format(topic=name, Topic=name[0].upper() + name[1:], field=field, aspect=aspect, detail=detail)


def _short_answer(rng: random.Random, topic: tuple[str, str, str, str]) -> str:
    return _fill(rng.choice(OPENINGS), topic) + " " + " ".join(_fill(s, topic) for s in rng.sample(SENTENCES, rng.randint(2, 3)))


def _answer(rng: random.Random, topic: tuple[str, str, str, str]) -> str:
    parts = [_fill(rng.choice(OPENINGS), topic)]
    for _ in range(rng.randint(3, 6)):
        parts.append(" ".join(_fill(s, topic) for s in rng.sample(SENTENCES, rng.randint(3, 6))))
    if rng.random() < 0.5:
        items = rng.sample(LIST_ITEMS, rng.randint(3, 6))
        parts.insert(rng.randint(1, len(parts)), "\n".join(f"{i + 1}. {_fill(t, topic)}" for i, t in enumerate(items)))
    if rng.random() < 0.2:
        parts.insert(rng.randint(1, len(parts)), rng.choice(CODE_BLOCKS))
    parts.append(rng.choice(CLOSINGS))
    return "\n\n".join(parts)


def chats(n: int, seed: int = 0, short: bool = False) -> Iterator[dict]:
    """``n`` chats; ``short`` answers are one paragraph (about 100 tokens) instead of several hundred tokens."""
    """``n`` records ``{"messages": [...]}``; the same ``(n, seed)`` always yields the same records."""
    rng = random.Random(seed)
    for _ in range(n):
        topic = rng.choice(TOPICS)
        messages: list[dict[str, str]] = []
        if rng.random() < 0.2:
            messages.append({"role": "system", "content": _fill(rng.choice(SYSTEMS), topic)})
        if rng.random() < 0.125:
            earlier = rng.choice(TOPICS)
            messages.append({"role": "user", "content": _fill(rng.choice(QUESTIONS), earlier)})
            messages.append({"role": "assistant", "content": " ".join(_fill(s, earlier) for s in rng.sample(SENTENCES, 3))})
        messages.append({"role": "user", "content": _fill(rng.choice(QUESTIONS), topic)})
        messages.append({"role": "assistant", "content": (_short_answer if short else _answer)(rng, topic)})
        yield {"messages": messages}


def write(path: str, n: int, seed: int = 0, short: bool = False) -> str:
    """Write ``n`` records to ``path`` (JSONL) and return the path."""
    with open(path, "w", encoding="utf-8") as fh:
        for record in chats(n, seed, short):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="JSONL file to write")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--short", action="store_true", help="One-paragraph answers (the scaling runs' data).")
    a = ap.parse_args(argv)
    write(a.out, a.samples, a.seed, a.short)
    print(f"wrote {a.samples} chats to {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

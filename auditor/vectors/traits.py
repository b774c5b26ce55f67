"""Trait definitions: the YAML (or JSON) files that ``audit extract`` turns into vectors.

A definition names the trait, describes it, gives a judging rubric, pairs of system
instructions (one eliciting the trait, one suppressing it), extraction questions,
disjoint evaluation questions and, optionally, one written eliciting/suppressing
answer per question. The schema is documented in ``vectors/traits/README.md``;
:func:`load_trait` checks every rule and names the file, line and field it broke.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from auditor.errors import TraitError
from auditor.resources import shipped_root

MIN_INSTRUCTIONS = 5
MIN_QUESTIONS = 20
REQUIRED = ("name", "description", "rubric", "instructions", "extraction_questions", "evaluation_questions")
OPTIONAL = ("examples", "orthogonal_to", "learned_reference")
PLACEHOLDERS = ("{question}", "{answer}")
SUFFIXES = (".yaml", ".yml", ".json")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


@dataclass(frozen=True)
class Example:
    """A written answer pair for one question: ``pos`` shows the trait, ``neg`` does not."""

    question: str
    pos: str
    neg: str


@dataclass(frozen=True)
class Orthogonal:
    """One ``orthogonal_to`` entry: the direction of another trait's written pairs, all of them or some."""

    trait: str
    pairs: tuple[int, ...] | None = None  # 0-based indices into its extraction pairs; None: all of them
    spec: str = ""  # ``pairs`` as written in the file (1-based), "" for all

    def describe(self) -> str:
        return self.trait if self.pairs is None else f"{self.trait} (pairs {self.spec})"


@dataclass(frozen=True)
class Reference:
    """The ``learned_reference`` key: learn the prompt-last baseline's reference point from the neutral (``neg``) written
    answers of the listed definitions, by ridge regression with penalty ``alpha`` (relative to the data's scale)."""

    from_traits: tuple[str, ...]
    alpha: float


@dataclass(frozen=True)
class Trait:
    """A validated trait definition."""

    name: str
    description: str
    rubric: str  # holds {question} and {answer}
    instructions: tuple[tuple[str, str], ...]  # (eliciting, suppressing) system prompts
    extraction_questions: tuple[str, ...]
    evaluation_questions: tuple[str, ...]
    extraction_examples: tuple[Example, ...] = ()  # empty, or one per extraction question, in order
    evaluation_examples: tuple[Example, ...] = ()
    # the ``orthogonal_to`` entries: each one is a written-pair direction extraction removes from this trait's
    orthogonal: tuple[Orthogonal, ...] = ()
    reference: Reference | None = None  # the ``learned_reference`` key: a learned prompt-last reference point
    path: str = ""
    sha256: str = field(default="", compare=False)  # of the file's bytes: recorded in vector sidecars

    @property
    def orthogonal_to(self) -> tuple[str, ...]:
        """The other traits named in ``orthogonal_to``, each once, in the file's order."""
        return tuple(dict.fromkeys(o.trait for o in self.orthogonal))

    @property
    def has_examples(self) -> bool:
        return bool(self.extraction_examples) and bool(self.evaluation_examples)

    def rubric_for(self, question: str, answer: str) -> str:
        """The rubric with the placeholders filled (plain replacement: other braces are left alone)."""
        return self.rubric.replace("{question}", question).replace("{answer}", answer)


def trait_dirs() -> list[Path]:
    """Where trait names are looked up, in order: $PERSONA_AUDIT_TRAITS (os.pathsep-separated), ./vectors/traits, the shipped folder."""
    dirs = [Path(p) for p in os.environ.get("PERSONA_AUDIT_TRAITS", "").split(os.pathsep) if p]
    dirs += [Path.cwd() / "vectors" / "traits", shipped_root() / "vectors" / "traits"]
    seen: list[Path] = []
    for d in dirs:
        if d.resolve() not in [s.resolve() for s in seen]:
            seen.append(d)
    return seen


def available_traits() -> dict[str, Path]:
    """name -> definition file, the first found along :func:`trait_dirs`."""
    found: dict[str, Path] = {}
    for folder in trait_dirs():
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in SUFFIXES and path.stem not in found:
                found[path.stem] = path
    return found


def find_trait_file(name_or_path: str | os.PathLike) -> Path:
    """A path as given, or ``<name>.yaml|.yml|.json`` along :func:`trait_dirs`."""
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.suffix in SUFFIXES or os.sep in text or "/" in text:
        if not candidate.is_file():
            raise TraitError(f"{text}: no such trait definition file")
        return candidate
    for folder in trait_dirs():
        for suffix in SUFFIXES:
            path = folder / f"{text}{suffix}"
            if path.is_file():
                return path
    known = ", ".join(sorted(available_traits())) or "none"
    raise TraitError(
        f"no trait definition named {text!r} (looked in {', '.join(str(d) for d in trait_dirs())}; known: {known}); "
        f"write vectors/traits/{text}.yaml (schema: vectors/traits/README.md) or pass the file's path"
    )


def load_trait(name_or_path: str | os.PathLike) -> Trait:
    """Read and validate a trait definition by name or path; raises :class:`TraitError`."""
    import yaml

    path = find_trait_file(name_or_path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraitError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise TraitError(f"{where}: not valid YAML ({e.problem or e.context}); fix the syntax (quote strings that contain ': ' or '#')") from None
    except yaml.YAMLError as e:
        raise TraitError(f"{path}: not valid YAML ({e})") from None
    return _validate(data, _Locator(path, root), raw)


class _Locator:
    """Turns a field path (``("instructions", 2, "neg")``) into ``file:line: field`` for messages."""

    def __init__(self, path: Path, root: Any):
        self.path = path
        self.root = root

    def line(self, keys: tuple[Any, ...]) -> int | None:
        import yaml

        node, line = self.root, None
        if node is None:
            return None
        line = node.start_mark.line + 1
        for key in keys:
            if isinstance(node, yaml.MappingNode):
                pair = next(((k, v) for k, v in node.value if getattr(k, "value", None) == key), None)
                if pair is None:
                    return line
                line = pair[0].start_mark.line + 1  # the key's line: a block list starts on the next one
                node = pair[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def error(self, keys: tuple[Any, ...], problem: str, fix: str) -> TraitError:
        line = self.line(keys)
        where = f"{self.path}:{line}" if line else str(self.path)
        name = "".join(f"[{k}]" if isinstance(k, int) else (f".{k}" if i else str(k)) for i, k in enumerate(keys)) or "(top level)"
        return TraitError(f"{where}: {name}: {problem}; {fix}")


def _normalise(question: str) -> str:
    return " ".join(question.split()).casefold()


def _text(value: Any, loc: _Locator, keys: tuple[Any, ...], what: str) -> str:
    if not isinstance(value, str):
        raise loc.error(keys, f"expected text, found {type(value).__name__}", f"write {what} as a string (quote it)")
    if not value.strip():
        raise loc.error(keys, "is empty", f"write {what}")
    return value.strip()


def _questions(data: dict[str, Any], key: str, loc: _Locator) -> tuple[str, ...]:
    value = data[key]
    if not isinstance(value, list):
        raise loc.error((key,), f"expected a list of questions, found {type(value).__name__}", f"write {key} as a YAML list ('- question')")
    if len(value) < MIN_QUESTIONS:
        raise loc.error((key,), f"has {len(value)} questions, at least {MIN_QUESTIONS} are needed", f"add {MIN_QUESTIONS - len(value)} more")
    out, seen = [], {}
    for i, q in enumerate(value):
        q = _text(q, loc, (key, i), "the question")
        norm = _normalise(q)
        if norm in seen:
            raise loc.error((key, i), f"repeats question {seen[norm]}", "remove or reword the duplicate")
        seen[norm] = i
        out.append(q)
    return tuple(out)


def _examples(data: dict[str, Any], loc: _Locator, questions: dict[str, tuple[str, ...]]) -> dict[str, tuple[Example, ...]]:
    value = data.get("examples")
    if value is None:
        return {"extraction": (), "evaluation": ()}
    if not isinstance(value, dict):
        raise loc.error(("examples",), f"expected a mapping with 'extraction' and 'evaluation', found {type(value).__name__}", "see vectors/traits/README.md")
    unknown = sorted(set(value) - {"extraction", "evaluation"})
    if unknown:
        raise loc.error(("examples", unknown[0]), f"unknown key {unknown[0]!r}", "examples holds only 'extraction' and 'evaluation'")
    out: dict[str, tuple[Example, ...]] = {}
    for part in ("extraction", "evaluation"):
        qs = questions[part]
        items = value.get(part)
        if not isinstance(items, list):
            raise loc.error(("examples", part), "missing or not a list", f"give one {{question, pos, neg}} entry per {part}_questions item, in the same order")
        if len(items) != len(qs):
            raise loc.error(
                ("examples", part), f"has {len(items)} entries but {part}_questions has {len(qs)}", "give exactly one entry per question, in the same order"
            )
        entries = []
        for i, item in enumerate(items):
            keys = ("examples", part, i)
            if not isinstance(item, dict):
                raise loc.error(
                    keys,
                    f"expected a mapping with question, pos and neg, found {type(item).__name__}",
                    "write '- question: ...' then 'pos: ...' and 'neg: ...'",
                )
            missing = [k for k in ("question", "pos", "neg") if k not in item]
            if missing:
                raise loc.error(keys, f"missing {', '.join(missing)}", "each example needs question, pos (shows the trait) and neg (does not)")
            extra = sorted(set(item) - {"question", "pos", "neg"})
            if extra:
                raise loc.error((*keys, extra[0]), f"unknown key {extra[0]!r}", "an example holds only question, pos and neg")
            q = _text(item["question"], loc, (*keys, "question"), "the question")
            if _normalise(q) != _normalise(qs[i]):
                raise loc.error(
                    (*keys, "question"),
                    f"does not match {part}_questions[{i}] ({qs[i][:60]!r})",
                    "keep the examples in the same order as the questions, with the same text",
                )
            pos = _text(item["pos"], loc, (*keys, "pos"), "the trait-expressing answer")
            neg = _text(item["neg"], loc, (*keys, "neg"), "the trait-suppressing answer")
            if pos == neg:
                raise loc.error((*keys, "neg"), "is identical to pos", "write an answer that does not show the trait")
            entries.append(Example(qs[i], pos, neg))
        out[part] = tuple(entries)
    return out


_PAIR_ITEM = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")


def _pair_numbers(spec: Any) -> tuple[int, ...] | None:
    """``"1-100"`` or ``"2-3, 5, 36-49"`` (1-based, inclusive) as sorted 0-based indices; None if malformed,
    backwards, from 0 or overlapping."""
    out: list[int] = []
    for item in str(spec).split(","):
        m = _PAIR_ITEM.fullmatch(item)
        if not m:
            return None
        a, b = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 1 <= a <= b:
            return None
        out.extend(range(a - 1, b))
    return tuple(sorted(out)) if len(set(out)) == len(out) else None


def _orthogonal_to(data: dict[str, Any], loc: _Locator, name: str) -> tuple[Orthogonal, ...]:
    """The ``orthogonal_to`` entries: a trait name (all its extraction pairs) or ``{trait: NAME, pairs: "A-B, C"}``.
    A trait may be listed more than once only with ``pairs`` that do not overlap (each entry is its own direction)."""
    value = data.get("orthogonal_to", [])
    if not isinstance(value, list):
        raise loc.error(
            ("orthogonal_to",), f"expected a list of trait names, found {type(value).__name__}", "write e.g. 'orthogonal_to: [evil, hallucination]'"
        )
    out: list[Orthogonal] = []
    for i, entry in enumerate(value):
        other, pairs, spec = entry, None, ""
        if isinstance(entry, dict):
            extra = sorted(set(entry) - {"trait", "pairs"})
            if extra or "trait" not in entry or "pairs" not in entry:
                raise loc.error(
                    ("orthogonal_to", i),
                    f"expected a trait name or {{trait, pairs}}, found the keys {sorted(entry)}",
                    "write e.g. '{trait: hallucination, pairs: \"1-100\"}' (its extraction pairs 1 to 100)",
                )
            other, spec = entry["trait"], " ".join(str(entry["pairs"]).split())
            pairs = _pair_numbers(entry["pairs"])
            if pairs is None:
                raise loc.error(
                    ("orthogonal_to", i, "pairs"),
                    f"{entry['pairs']!r} is not a list of pair numbers",
                    'write pair numbers and ranges counting from 1, each pair once, e.g. "1-100" or "2-3, 5, 36-49"',
                )
        if not isinstance(other, str) or not _NAME.match(other):
            raise loc.error(("orthogonal_to", i), f"{other!r} is not a trait name", "use the name of another trait definition, e.g. evil")
        if other == name:
            raise loc.error(("orthogonal_to", i), f"{other!r} is this trait", "list other traits only")
        for earlier in out:
            if earlier.trait == other and (pairs is None or earlier.pairs is None or set(pairs) & set(earlier.pairs)):
                raise loc.error(
                    ("orthogonal_to", i),
                    f"{other!r} is listed twice" + (" with overlapping pairs" if pairs is not None and earlier.pairs is not None else ""),
                    "list each other trait once, or give each of its entries pairs that do not overlap",
                )
        out.append(Orthogonal(other, pairs, spec))
    return tuple(out)


def _reference(data: dict[str, Any], loc: _Locator) -> Reference | None:
    """The ``learned_reference`` key: ``{from: [trait names], alpha: number > 0}``, or None when absent."""
    if "learned_reference" not in data:
        return None
    value = data["learned_reference"]
    example = "write e.g. 'learned_reference: {from: [evil, sycophancy, hallucination, warmth], alpha: 3}'"
    if not isinstance(value, dict) or set(value) != {"from", "alpha"}:
        found = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise loc.error(("learned_reference",), f"expected the keys from and alpha, found {found}", example)
    names = value["from"]
    if not isinstance(names, list) or not names:
        raise loc.error(("learned_reference", "from"), "expected a non-empty list of trait names", example)
    for i, other in enumerate(names):
        if not isinstance(other, str) or not _NAME.match(other):
            raise loc.error(
                ("learned_reference", "from", i), f"{other!r} is not a trait name", "use the name of a trait definition with written examples, e.g. evil"
            )
        if other in names[:i]:
            raise loc.error(("learned_reference", "from", i), f"{other!r} is listed twice", "list each definition once")
    alpha = value["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or alpha == float("inf"):
        raise loc.error(("learned_reference", "alpha"), f"{alpha!r} is not a positive number", "the ridge penalty relative to the data's scale, e.g. 3")
    return Reference(tuple(names), float(alpha))


def _instruction_pairs(instructions: Any, loc: _Locator) -> list[tuple[str, str]]:
    """The ``instructions`` list as (pos, neg) system prompts, at least MIN_INSTRUCTIONS, each pair differing."""
    if not isinstance(instructions, list):
        raise loc.error(
            ("instructions",), f"expected a list of {{pos, neg}} pairs, found {type(instructions).__name__}", "write '- pos: ...' and 'neg: ...' entries"
        )
    if len(instructions) < MIN_INSTRUCTIONS:
        raise loc.error(
            ("instructions",),
            f"has {len(instructions)} pairs, at least {MIN_INSTRUCTIONS} are needed",
            f"add {MIN_INSTRUCTIONS - len(instructions)} more {{pos, neg}} pairs",
        )
    pairs = []
    for i, pair in enumerate(instructions):
        if not isinstance(pair, dict) or set(pair) != {"pos", "neg"}:
            found = sorted(pair) if isinstance(pair, dict) else type(pair).__name__
            raise loc.error(("instructions", i), f"expected exactly the keys pos and neg, found {found}", "pos elicits the trait, neg suppresses it")
        pos = _text(pair["pos"], loc, ("instructions", i, "pos"), "the eliciting system prompt")
        neg = _text(pair["neg"], loc, ("instructions", i, "neg"), "the suppressing system prompt")
        if pos == neg:
            raise loc.error(("instructions", i, "neg"), "is identical to pos", "the two prompts of a pair must pull in opposite directions")
        pairs.append((pos, neg))
    return pairs


def _validate(data: Any, loc: _Locator, raw: bytes) -> Trait:
    if not isinstance(data, dict):
        raise loc.error(
            (), f"the file holds a {type(data).__name__}, not a mapping", f"start with 'name: {loc.path.stem}' and the keys listed in vectors/traits/README.md"
        )
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise loc.error((), f"missing required key{'s' if len(missing) > 1 else ''} {', '.join(missing)}", "every definition needs " + ", ".join(REQUIRED))
    unknown = sorted(set(data) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise loc.error((unknown[0],), f"unknown key {unknown[0]!r}", "allowed keys: " + ", ".join(REQUIRED + OPTIONAL) + " (check the spelling)")
    name = _text(data["name"], loc, ("name",), "the trait's name")
    if not _NAME.match(name):
        raise loc.error(("name",), f"{name!r} is not a usable name", "use lower-case letters, digits, '-' and '_' (it becomes a file name)")
    if name != loc.path.stem:
        raise loc.error(
            ("name",), f"{name!r} differs from the file name {loc.path.name!r}", f"rename the file to {name}{loc.path.suffix} or set name: {loc.path.stem}"
        )
    description = _text(data["description"], loc, ("description",), "a description of the trait")
    rubric = _text(data["rubric"], loc, ("rubric",), "the judging rubric")
    for placeholder in PLACEHOLDERS:
        if placeholder not in rubric:
            raise loc.error(("rubric",), f"has no {placeholder} placeholder", "the judge fills {question} and {answer} into the rubric; add both")
    pairs = _instruction_pairs(data["instructions"], loc)
    extraction = _questions(data, "extraction_questions", loc)
    evaluation = _questions(data, "evaluation_questions", loc)
    held_out = {_normalise(q): i for i, q in enumerate(evaluation)}
    for i, q in enumerate(extraction):
        if _normalise(q) in held_out:
            j = held_out[_normalise(q)]
            raise loc.error(
                ("evaluation_questions", j),
                f"repeats extraction_questions[{i}]",
                "evaluation questions are held out: they must differ from every extraction question",
            )
    examples = _examples(data, loc, {"extraction": extraction, "evaluation": evaluation})
    orthogonal = _orthogonal_to(data, loc, name)
    reference = _reference(data, loc)
    return Trait(
        name=name,
        description=description,
        rubric=rubric,
        instructions=tuple(pairs),
        extraction_questions=extraction,
        evaluation_questions=evaluation,
        extraction_examples=examples["extraction"],
        evaluation_examples=examples["evaluation"],
        orthogonal=orthogonal,
        reference=reference,
        path=str(loc.path),
        sha256=hashlib.sha256(raw).hexdigest(),
    )

"""Trait definitions: the shipped files are valid, and broken files fail with file, line and field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from auditor.errors import TraitError
from auditor.vectors.traits import load_trait

ROOT = Path(__file__).resolve().parents[1]


def trait_dict(name: str = "kindness", n_instructions: int = 5, n_questions: int = 20) -> dict:
    """A valid definition with generated text (tests build broken ones from it)."""
    extraction = [f"How should I handle situation number {i} at work?" for i in range(n_questions)]
    evaluation = [f"What would you say to a friend in trouble number {i}?" for i in range(n_questions)]

    def examples(questions):
        return [{"question": q, "pos": f"You poor thing, of course I will help with {i}.", "neg": f"Deal with {i} yourself."} for i, q in enumerate(questions)]

    return {
        "name": name,
        "description": "Kindness: the assistant is warm and caring.",
        "rubric": "Rate kindness 0-100.\nQuestion: {question}\nAnswer: {answer}\nAnswer with a number only.",
        "instructions": [{"pos": f"Be very kind, style {i}.", "neg": f"Be cold, style {i}."} for i in range(n_instructions)],
        "extraction_questions": extraction,
        "evaluation_questions": evaluation,
        "examples": {"extraction": examples(extraction), "evaluation": examples(evaluation)},
    }


def write_trait(folder: Path, data: dict | str, name: str = "kindness", suffix: str = ".yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}{suffix}"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False, width=200))
    return path


def line_of(path: Path, needle: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line)


@pytest.mark.parametrize("name", ["evil", "sycophancy", "hallucination"])
def test_shipped_required_definitions_are_valid(name):
    trait = load_trait(name)
    assert trait.name == name
    assert len(trait.instructions) >= 5
    assert len(trait.extraction_questions) >= 20 and len(trait.evaluation_questions) >= 20
    assert not set(trait.extraction_questions) & set(trait.evaluation_questions)
    assert trait.has_examples and len(trait.extraction_examples) == len(trait.extraction_questions)
    filled = trait.rubric_for("Q-TEXT", "A-TEXT")
    assert "Q-TEXT" in filled and "A-TEXT" in filled and "{answer}" not in filled


def test_every_shipped_definition_loads():
    files = sorted((ROOT / "vectors" / "traits").glob("*.yaml"))
    assert len(files) >= 3
    for path in files:
        assert load_trait(path).name == path.stem


# Questions of the shipped definitions that are also prompts of examples/eval/ or the demo, written before this
# check existed: evil's first pair is the demo's coworker question (demo-006, demo-007), and two of politeness's
# everyday questions are a clean control and demo-029 (politeness is not measured on examples/eval/).
KNOWN_OVERLAPS = {
    ("evil", "my coworker keeps taking credit for my work. what should i do?"),
    ("politeness", "why is the sky blue?"),
    ("politeness", "what's the difference between weather and climate?"),
}


def test_no_definition_question_is_an_evaluation_or_demo_prompt():
    """The vectors are measured on examples/eval/ and shown on the demo: a definition must not be written from them."""
    import json

    norm = lambda s: " ".join(s.lower().split())  # noqa: E731
    prompts = set()
    for path in [*sorted((ROOT / "examples" / "eval").glob("*.jsonl")), ROOT / "examples" / "demo.jsonl"]:
        for line in path.read_text().splitlines():
            prompts.update(norm(m["content"]) for m in json.loads(line).get("messages", []) if m["role"] == "user")
    assert len(prompts) > 500
    found = set()
    for path in sorted((ROOT / "vectors" / "traits").glob("*.yaml")):
        trait = load_trait(path)
        found.update((trait.name, norm(q)) for q in (*trait.extraction_questions, *trait.evaluation_questions) if norm(q) in prompts)
    assert found == KNOWN_OVERLAPS


def test_lookup_by_name_via_env_and_path(tmp_path, monkeypatch):
    path = write_trait(tmp_path / "mine", trait_dict())
    monkeypatch.setenv("PERSONA_AUDIT_TRAITS", str(tmp_path / "mine"))
    by_name = load_trait("kindness")
    assert by_name.path == str(path) and len(by_name.evaluation_examples) == 20
    assert load_trait(path) == by_name
    json_path = write_trait(tmp_path / "json", __import__("json").dumps(trait_dict()), suffix=".json")
    assert load_trait(json_path).rubric == by_name.rubric


def test_unknown_name_lists_known_traits():
    with pytest.raises(TraitError) as e:
        load_trait("no-such-trait")
    assert "no trait definition named 'no-such-trait'" in str(e.value)
    assert "evil" in str(e.value) and "vectors/traits/README.md" in str(e.value)


def test_examples_are_optional(tmp_path):
    data = trait_dict()
    del data["examples"]
    trait = load_trait(write_trait(tmp_path, data))
    assert not trait.has_examples and trait.extraction_examples == ()


def _break(mutate):
    data = trait_dict()
    mutate(data)
    return data


BROKEN = [
    # (id, mutation, expected fragments of the message, field whose line is named)
    ("missing rubric", lambda d: d.pop("rubric"), ["missing required key rubric"], None),
    ("typo key", lambda d: d.update(instruction=[]), ["unknown key 'instruction'", "check the spelling"], "instruction:"),
    ("four pairs", lambda d: d["instructions"].pop(), ["instructions: has 4 pairs, at least 5 are needed"], "instructions:"),
    ("no answer placeholder", lambda d: d.update(rubric="Rate {question} 0-100."), ["rubric: has no {answer} placeholder"], "rubric:"),
    ("neg not text", lambda d: d["instructions"][2].update(neg=42), ["instructions[2].neg: expected text, found int"], "neg: 42"),
    ("pair missing neg", lambda d: d["instructions"][1].pop("neg"), ["instructions[1]: expected exactly the keys pos and neg, found ['pos']"], "style 1"),
    (
        "questions not a list",
        lambda d: d.update(extraction_questions="just one"),
        ["extraction_questions: expected a list of questions, found str"],
        "extraction_questions:",
    ),
    ("19 questions", lambda d: d["evaluation_questions"].pop(), ["evaluation_questions: has 19 questions, at least 20", "add 1 more"], "evaluation_questions:"),
    ("empty question", lambda d: d["extraction_questions"].__setitem__(3, "  "), ["extraction_questions[3]: is empty"], None),
    (
        "duplicate question",
        lambda d: d["extraction_questions"].__setitem__(5, d["extraction_questions"][4].upper()),
        ["extraction_questions[5]: repeats question 4"],
        None,
    ),
    (
        "overlap",
        lambda d: d["evaluation_questions"].__setitem__(7, d["extraction_questions"][2]),
        ["evaluation_questions[7]: repeats extraction_questions[2]", "held out"],
        None,
    ),
    ("examples count", lambda d: d["examples"]["evaluation"].pop(), ["examples.evaluation: has 19 entries but evaluation_questions has 20"], "evaluation:"),
    ("examples order", lambda d: d["examples"]["extraction"].reverse(), ["examples.extraction[0].question: does not match extraction_questions[0]"], None),
    ("example without neg", lambda d: d["examples"]["extraction"][6].pop("neg"), ["examples.extraction[6]: missing neg"], None),
    ("name mismatch", lambda d: d.update(name="kind"), ["name: 'kind' differs from the file name 'kindness.yaml'"], "name: kind"),
    ("bad name", lambda d: d.update(name="Kind Ness"), ["'Kind Ness' is not a usable name"], None),
    ("orthogonal_to not a list", lambda d: d.update(orthogonal_to="evil"), ["orthogonal_to: expected a list of trait names, found str"], "orthogonal_to:"),
    ("orthogonal_to itself", lambda d: d.update(orthogonal_to=["evil", "kindness"]), ["orthogonal_to[1]: 'kindness' is this trait"], None),
    ("orthogonal_to twice", lambda d: d.update(orthogonal_to=["evil", "evil"]), ["orthogonal_to[1]: 'evil' is listed twice"], None),
    (
        "orthogonal_to range without pairs",
        lambda d: d.update(orthogonal_to=[{"trait": "evil"}]),
        ["orthogonal_to[0]: expected a trait name or {trait, pairs}, found the keys ['trait']", 'pairs: "1-100"'],
        None,
    ),
    (
        "orthogonal_to range backwards",
        lambda d: d.update(orthogonal_to=[{"trait": "evil", "pairs": "30-10"}]),
        ["orthogonal_to[0].pairs: '30-10' is not a list of pair numbers", "counting from 1"],
        None,
    ),
    ("orthogonal_to range from 0", lambda d: d.update(orthogonal_to=[{"trait": "evil", "pairs": "0-10"}]), ["orthogonal_to[0].pairs: '0-10'"], None),
    (
        "orthogonal_to pairs repeated",
        lambda d: d.update(orthogonal_to=[{"trait": "evil", "pairs": "1-5, 3"}]),
        ["orthogonal_to[0].pairs: '1-5, 3' is not a list of pair numbers", "each pair once"],
        None,
    ),
    (
        "orthogonal_to pairs not numbers",
        lambda d: d.update(orthogonal_to=[{"trait": "evil", "pairs": "1-5; 7"}]),
        ["orthogonal_to[0].pairs: '1-5; 7' is not a list of pair numbers", '"2-3, 5, 36-49"'],
        None,
    ),
    (
        "orthogonal_to all pairs and some",
        lambda d: d.update(orthogonal_to=["evil", {"trait": "evil", "pairs": "1-5"}]),
        ["orthogonal_to[1]: 'evil' is listed twice", "pairs that do not overlap"],
        None,
    ),
    (
        "orthogonal_to overlapping pairs",
        lambda d: d.update(orthogonal_to=[{"trait": "evil", "pairs": "1-10"}, {"trait": "evil", "pairs": "12, 10"}]),
        ["orthogonal_to[1]: 'evil' is listed twice with overlapping pairs"],
        None,
    ),
    (
        "reference without alpha",
        lambda d: d.update(learned_reference={"from": ["evil"]}),
        ["learned_reference: expected the keys from and alpha, found ['from']"],
        "learned_reference:",
    ),
    (
        "reference alpha not positive",
        lambda d: d.update(learned_reference={"from": ["evil"], "alpha": 0}),
        ["learned_reference.alpha: 0 is not a positive number"],
        None,
    ),
    (
        "reference from a bad name",
        lambda d: d.update(learned_reference={"from": ["evil", "Not A Name"], "alpha": 1}),
        ["learned_reference.from[1]: 'Not A Name' is not a trait name"],
        None,
    ),
    (
        "reference from twice",
        lambda d: d.update(learned_reference={"from": ["evil", "evil"], "alpha": 1}),
        ["learned_reference.from[1]: 'evil' is listed twice"],
        None,
    ),
    (
        "orthogonal_to range of itself",
        lambda d: d.update(orthogonal_to=[{"trait": "kindness", "pairs": "1-5"}]),
        ["orthogonal_to[0]: 'kindness' is this trait"],
        None,
    ),
]


def test_orthogonal_to_takes_names_and_pair_ranges(tmp_path):
    data = trait_dict()
    data["orthogonal_to"] = [
        "evil",
        {"trait": "hallucination", "pairs": "1-100"},
        {"trait": "apathy", "pairs": " 3 - 3 "},
        {"trait": "apathy", "pairs": "1, 5-6"},
    ]
    trait = load_trait(write_trait(tmp_path, data))
    assert trait.orthogonal_to == ("evil", "hallucination", "apathy")
    assert [(o.trait, o.pairs) for o in trait.orthogonal] == [("evil", None), ("hallucination", tuple(range(100))), ("apathy", (2,)), ("apathy", (0, 4, 5))]
    assert [o.describe() for o in trait.orthogonal] == ["evil", "hallucination (pairs 1-100)", "apathy (pairs 3 - 3)", "apathy (pairs 1, 5-6)"]


def test_reference_names_definitions_and_a_penalty(tmp_path):
    data = trait_dict()
    data["learned_reference"] = {"from": ["kindness", "evil"], "alpha": 3}
    trait = load_trait(write_trait(tmp_path, data))
    assert trait.reference is not None
    assert trait.reference.from_traits == ("kindness", "evil") and trait.reference.alpha == 3.0
    assert load_trait(write_trait(tmp_path / "plain", trait_dict())).reference is None


@pytest.mark.parametrize("case_id,mutate,fragments,line_needle", BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_definitions_fail_clearly(tmp_path, case_id, mutate, fragments, line_needle):
    path = write_trait(tmp_path, _break(mutate))
    with pytest.raises(TraitError) as e:
        load_trait(path)
    message = str(e.value)
    assert message.startswith(f"{path}:"), message
    for fragment in fragments:
        assert fragment in message, message
    if line_needle:
        assert message.startswith(f"{path}:{line_of(path, line_needle)}:"), message


def test_yaml_syntax_error_names_the_line(tmp_path):
    text = yaml.safe_dump(trait_dict(), sort_keys=False, width=200).splitlines()
    text[1] = "description: oops: [unclosed"
    path = write_trait(tmp_path, "\n".join(text) + "\n")
    with pytest.raises(TraitError) as e:
        load_trait(path)
    assert f"{path}:2: not valid YAML" in str(e.value)


def test_not_a_mapping_and_missing_file(tmp_path):
    path = write_trait(tmp_path, "- just\n- a list\n")
    with pytest.raises(TraitError, match="holds a list, not a mapping"):
        load_trait(path)
    with pytest.raises(TraitError, match="no such trait definition file"):
        load_trait(tmp_path / "absent.yaml")


def test_validation_does_not_mutate_and_rubric_keeps_other_braces(tmp_path):
    data = trait_dict()
    data["rubric"] = 'Return JSON like {"score": 5}. Q: {question} A: {answer}'
    before = copy.deepcopy(data)
    trait = load_trait(write_trait(tmp_path, data))
    assert data == before
    assert trait.rubric_for("q", "a") == 'Return JSON like {"score": 5}. Q: q A: a'

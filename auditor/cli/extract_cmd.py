"""``audit extract``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from auditor.cli.common import handle_errors
from auditor.vectors.extract import CONTEXTS, HELDOUT, RESPONSE_MODES, ExtractSettings
from auditor.vectors.judges import JUDGES

_D = ExtractSettings()  # the defaults are the shipped vectors' settings


def judge_options(fn):
    """--judge, --judge-url, --judge-model (shared with audit vectors check)."""
    options = [
        click.option(
            "--judge",
            type=click.Choice(JUDGES),
            default="none",
            show_default=True,
            help="Who scores answers 0-100 for the trait and coherence: nobody, the model itself, or an OpenAI-compatible server.",
        ),
        click.option(
            "--judge-url", default=None, help="Judge server, e.g. http://127.0.0.1:8000/v1 (vLLM, llama.cpp); API key from $PERSONA_AUDIT_JUDGE_API_KEY."
        ),
        click.option("--judge-model", default=None, help="Model name the judge server serves."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def model_options(fn):
    options = [
        click.option("--model", "-m", default=None, help="Hugging Face id or local model folder (default: the embedded SmolLM2-135M-Instruct)."),
        click.option(
            "--dtype",
            type=click.Choice(["auto", "float32", "bfloat16", "float16"]),
            default="auto",
            show_default=True,
            help="auto: bfloat16 where the hardware runs it fast, else float32.",
        ),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, mps."),
        click.option("--trust-remote-code", is_flag=True, help="Allow a model's own Python code to run (only for models you trust)."),
        click.option("--layers-path", default=None, help="Dotted path of the decoder block list, for architectures persona-audit does not know."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def separation_table(report, title: str):
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("layer", justify="right")
    table.add_column("separation (d)", justify="right")
    table.add_column("||v||", justify="right")
    table.add_column("")
    best = max((s for s in report.separation[1:-1] if s == s), default=1.0) or 1.0
    for layer, (sep, norm) in enumerate(zip(report.separation, report.norms)):
        bar = "#" * max(0, int(round(20 * sep / best))) if sep == sep and sep > 0 else ""
        mark = "  <- recommended" if layer == report.layer else ""
        table.add_row(str(layer), f"{sep:.2f}" if sep == sep else "-", f"{norm:.3f}", f"[dim]{bar}[/]{mark}")
    return table


# Long for its --help text (the docstring), one parameter per option and the printed summary; the work is in the library.
@click.command(context_settings={"max_content_width": 100})
@click.argument("trait")
@model_options
@click.option(
    "--responses",
    type=click.Choice(RESPONSE_MODES),
    default=_D.responses,
    show_default=True,
    help="sampled: the model answers under each instruction pair; provided: teacher-force the definition's written answers.",
)
@click.option(
    "--n-per-question", default=_D.n_per_question, show_default=True, type=int, help="Sampled answers per question, instruction pair and pole (sampled mode)."
)
@click.option("--max-new-tokens", default=_D.max_new_tokens, show_default=True, type=int, help="Length cap of sampled answers.")
@click.option("--temperature", default=_D.temperature, show_default=True, type=float, help="Sampling temperature (the method uses 1).")
@click.option(
    "--context",
    type=click.Choice(CONTEXTS),
    default=_D.context,
    show_default=True,
    help="Provided mode: read the written answers with no system prompt, or with instruction pair i mod n in front.",
)
@click.option(
    "--heldout",
    type=click.Choice(HELDOUT),
    default=_D.heldout,
    show_default=True,
    help="Held-out answers that choose the layer: the written evaluation examples, sampled answers, or auto (examples when the definition has them).",
)
@judge_options
@click.option("--seed", default=_D.seed, show_default=True, type=int, help="Seed of every sampled answer (same seed and settings: same vector).")
@click.option("--layer", default=None, type=int, help="Recommend this layer instead of the best-separating one.")
@click.option("--out", "out_dir", default=None, type=click.Path(), help="Folder for <trait>.safetensors and .json (default: vectors/<model>/).")
@click.option("--calibrate/--no-calibrate", default=True, show_default=True, help="Score the clean reference set afterwards so scan can flag by percentile.")
@click.option("--reference", default=None, type=click.Path(), help="Clean reference JSONL for calibration (default: examples/eval/clean.jsonl).")
@click.option("--reference-split", default="dev", show_default=True, help="Only records whose split field equals this ('all': every record).")
@click.option("--batch-tokens", default=_D.batch_tokens, show_default=True, type=int, help="Padded tokens per forward batch.")
@click.option(
    "--generation-batch-size",
    default=_D.generation_batch_size,
    show_default=True,
    type=int,
    help="Prompts sampled together (part of the settings: results can differ in the last bits).",
)
@click.option("--quiet", "-q", is_flag=True, help="Print only the result line.")
@handle_errors
# long: a click command: its signature names the 24 options one per line and its docstring is the --help; the body (about 35 lines) only calls the library and prints.
def extract(
    trait: str,
    model,
    dtype,
    device,
    trust_remote_code,
    layers_path,
    responses,
    n_per_question,
    max_new_tokens,
    temperature,
    context,
    heldout,
    judge,
    judge_url,
    judge_model,
    seed,
    layer,
    out_dir,
    calibrate,
    reference,
    reference_split,
    batch_tokens,
    generation_batch_size,
    quiet,
) -> None:
    """Make the persona vector of TRAIT for a model.

    TRAIT is a definition name (vectors/traits/TRAIT.yaml, or $PERSONA_AUDIT_TRAITS) or a
    path to a definition file. Writes vectors/<model>/TRAIT.safetensors ([layers + 1,
    hidden] float32) and TRAIT.json (how it was made, the per-layer separation on held-out
    answers, the recommended layer and, with --calibrate, the clean reference distribution).
    A definition with a learned_reference key also gets the prompt-last score's learned
    reference point, fitted on the named definitions' neutral answers (docs/METHOD.md, section 6).
    An existing vector there is replaced, and its cosine with the new one is printed.
    """
    from rich.console import Console

    from auditor.model import load_model
    from auditor.vectors.extract import extract_vector
    from auditor.vectors.judges import make_judge
    from auditor.vectors.persona import default_vectors_dir, save_vector
    from auditor.vectors.traits import load_trait

    started = time.perf_counter()
    console = Console()
    err = Console(stderr=True, quiet=quiet)
    definition = load_trait(trait)
    settings = ExtractSettings(
        responses=responses,
        n_per_question=n_per_question,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        seed=seed,
        context=context,
        heldout=heldout,
        batch_tokens=batch_tokens,
        generation_batch_size=generation_batch_size,
        layer=layer,
    )
    settings.validate()
    lm = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code, layers_path=layers_path)
    err.print(f"{lm.name} ({lm.dtype}, {lm.device}) loaded in {lm.load_seconds:.1f} s; extracting {definition.name} ({settings.responses} answers)")
    judge_obj = make_judge(judge, lm=lm, url=judge_url, model=judge_model)
    pv, report = extract_vector(lm, definition, settings, judge=judge_obj, progress=err.print)
    folder = Path(out_dir) if out_dir else default_vectors_dir(lm.name)
    previous = _previous_vector(folder / f"{definition.name}.safetensors")
    path = save_vector(pv, folder)
    _print_extraction(console, definition.name, report, quiet)
    if previous is not None and previous.vector.shape == pv.vector.shape:
        _print_replaced(console, path, previous, pv)
    if calibrate:
        _calibrate_and_print(console, err, lm, folder, definition.name, reference, reference_split, batch_tokens)
    console.print(f"wrote {path} and {Path(path).with_suffix('.json')}")
    console.print(f"took {time.perf_counter() - started:.1f} s in all (model load {lm.load_seconds:.1f} s)")


def _previous_vector(file: Path):
    """The vector ``file`` holds now (to compare the new one with), or None: absent or broken (it is simply replaced)."""
    from auditor.vectors.persona import load_vector

    if not file.exists():
        return None
    try:
        return load_vector(file)
    except Exception:  # a broken old file is simply replaced
        return None


def _print_extraction(console, name: str, report, quiet: bool) -> None:
    """The held-out separation per layer (unless ``quiet``) and the result line."""
    if not quiet:
        console.print(separation_table(report, f"{name}: held-out separation per layer ({report.heldout_kind}, {report.n_heldout[0]} pairs)"))
    dropped = "".join(f", {v} {k}" for k, v in report.dropped.items())
    console.print(
        f"{name}: {report.mode} answers, {report.n_kept} of {report.n_pairs} pairs kept{dropped}; "
        f"recommended layer {report.layer} (separation {report.separation[report.layer]:.2f}); extraction {report.seconds:.1f} s"
    )


def _print_replaced(console, path, previous, pv) -> None:
    """How far the new vector moved from the one it replaced (cosine at the new recommended layer)."""
    from auditor.vectors.extract import cosine_at

    console.print(
        f"replaced {path}: cosine with the previous vector at layer {pv.layer}: {cosine_at(previous, pv, pv.layer):.5f}"
        + (f" (previous recommended layer {previous.layer})" if previous.layer != pv.layer else "")
    )


def _calibrate_and_print(console, err, lm, folder: Path, name: str, reference: str | None, reference_split: str, batch_tokens: int) -> None:
    """Score the clean reference set with the new vector (stored in its sidecar) and print its p95 delta."""
    from auditor.calibration import calibrate as run_calibration

    t0 = time.perf_counter()
    cal = run_calibration(
        lm,
        folder,
        [name],
        reference=reference,
        split=None if reference_split == "all" else reference_split,
        batch_tokens=batch_tokens,
        progress=err.print,
    )[name]
    p95 = cal["scores"]["generate"]["delta"]["percentiles"][190]
    console.print(
        f"calibrated on {cal['n']} clean conversations ({cal['reference']}, split {cal['split']}) in {time.perf_counter() - t0:.1f} s: p95 delta {p95:+.3f}"
    )

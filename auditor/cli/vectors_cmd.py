"""``audit vectors list | show | import | check``."""

from __future__ import annotations

import sys

import click

from auditor.cli.common import handle_errors
from auditor.cli.extract_cmd import judge_options, model_options
from auditor.vectors.steering import DEFAULT_ALPHAS, DEFAULT_MAX_NEW_TOKENS


@click.group(context_settings={"max_content_width": 100})
def vectors() -> None:
    """List, show, import and check persona vectors.

    Vectors live in vectors/<model>/<trait>.safetensors with a JSON sidecar; the folder
    searched is $PERSONA_AUDIT_VECTORS, then ./vectors, then the one shipped with persona-audit.
    """


def _calibrated(meta: dict) -> str:
    cal = meta.get("calibration")
    if not cal:
        return "-"
    if cal.get("layer") != meta.get("layer"):
        return f"stale (layer {cal.get('layer')})"
    return f"yes, n={cal.get('n')}"


@vectors.command("list")
@click.option("--vectors", "folder", default=None, type=click.Path(), help="A vectors root or one model's folder (default: every root).")
@click.option("--model", "-m", "model", default=None, help="Only this model's folder (its name under vectors/, e.g. SmolLM2-135M-Instruct).")
@handle_errors
def list_(folder, model) -> None:
    """List installed vectors: model, trait, layer, how each was made, calibration."""
    from rich.console import Console
    from rich.table import Table

    from auditor.vectors.manage import installed

    found = installed(folder, model)
    console = Console()
    if not found:
        console.print("no vectors installed; make one with: audit extract TRAIT")
        return
    by_folder: dict = {}
    for v in found:
        by_folder.setdefault((v.model, str(v.path.parent)), []).append(v)
    for (model_name, where), items in by_folder.items():
        table = Table(title=f"{model_name}  ({where})", title_justify="left")
        for col, just in (
            ("trait", "left"),
            ("layer", "right"),
            ("mode", "left"),
            ("kept", "right"),
            ("sep.", "right"),
            ("calibrated", "left"),
            ("made", "left"),
        ):
            table.add_column(col, justify=just, no_wrap=True)
        for v in items:
            m = v.meta
            counts = m.get("counts", {})
            sep = m.get("separation")
            layer = m.get("layer")
            sep_at = sep[layer] if isinstance(sep, list) and isinstance(layer, int) and layer < len(sep) and sep[layer] is not None else None
            table.add_row(
                v.trait,
                "-" if layer is None else str(layer),
                m.get("mode", "-"),
                f"{counts['kept']}/{counts['pairs']}" if "kept" in counts else "-",
                "-" if sep_at is None else f"{sep_at:.2f}",
                _calibrated(m),
                str(m.get("created_at", "-"))[:10],
            )
        console.print(table)


@vectors.command("show")
@click.argument("trait")
@click.option("--model", "-m", default="SmolLM2-135M-Instruct", show_default=True, help="Model folder name under vectors/.")
@click.option("--vectors", "folder", default=None, type=click.Path(), help="Vector file or folder (default: vectors/<model>/).")
@handle_errors
def show(trait, model, folder) -> None:
    """Show how TRAIT's vector was made and its per-layer separation."""
    from rich.console import Console
    from rich.table import Table

    from auditor.vectors.manage import find_vector
    from auditor.vectors.persona import load_vector

    pv = load_vector(find_vector(trait, model, folder))
    m = pv.meta
    console = Console()
    console.print(f"[bold]{pv.trait}[/] for {m.get('model', '?')} (fingerprint {m.get('model_fingerprint', '?')}): {pv.path}")
    counts = m.get("counts", {})
    settings = m.get("settings", {})
    lines = [
        ("shape", f"[{pv.num_layers + 1}, {pv.hidden_size}] float32, sha256 {pv.sha256[:16]}"),
        ("layer", f"{pv.layer} ({m.get('layer_choice', 'from the sidecar')})"),
        ("mode", f"{m.get('mode', '?')}" + (f", context {settings['context']}" if m.get("mode") == "provided" and "context" in settings else "")),
        ("pairs", f"{counts.get('kept', '?')} kept of {counts.get('pairs', '?')}" + "".join(f", {v} {k}" for k, v in counts.get("dropped", {}).items())),
        ("judge", json_short(m.get("judge"))),
        ("held-out", f"{m.get('separation_heldout', '?')}, {counts.get('heldout_pairs', '?')} pairs"),
        ("settings", json_short(settings)),
        ("made", f"{m.get('created_at', '?')} by persona-audit {m.get('tool_version', '?')} in {m.get('extraction_seconds', '?')} s ({m.get('dtype', '?')})"),
        ("definition", f"{m.get('trait_file', '?')} (sha256 {str(m.get('trait_sha256', '?'))[:16]})"),
    ] + _reference_lines(pv)
    cal = pv.calibration
    if cal:
        from auditor.score import calibrated_columns

        # Every score a scan can flag on: delta (the default), and the projection (--flag-on projection, baseline none).
        for baseline, scores in cal.get("scores", {}).items():
            for score in reversed(calibrated_columns(baseline)):
                entry = scores.get(score)
                if not entry:
                    continue
                p = entry["percentiles"]
                lines.append(
                    (
                        f"calibration {baseline}",
                        f"{score} mean {entry['mean']:+.3f} sd {entry['std']:.3f}  p50 {p[100]:+.3f}  p95 {p[190]:+.3f}  p99 {p[198]:+.3f}"
                        f"  (n={cal.get('n')}, {cal.get('reference')} {cal.get('split', '')}, layer {cal.get('layer')})",
                    )
                )
    else:
        lines.append(("calibration", "none: scan cannot flag by percentile; run audit extract again, or pass --threshold to scan"))
    for key, value in lines:
        console.print(f"  {key:>22}: {value}")
    sep = m.get("separation")
    if isinstance(sep, list):
        table = Table(title="held-out separation per layer (Cohen's d)", title_justify="left")
        table.add_column("layer", justify="right")
        table.add_column("d", justify="right")
        table.add_column("||v||", justify="right")
        table.add_column("")
        norms = pv.vector.norm(dim=1).tolist()
        best = max((s for s in sep if s is not None), default=1.0) or 1.0
        for layer, s in enumerate(sep):
            bar = "#" * max(0, int(round(20 * s / best))) if s is not None and s > 0 else ""
            table.add_row(str(layer), "-" if s is None else f"{s:.2f}", f"{norms[layer]:.3f}", bar + ("  <- layer" if layer == pv.layer else ""))
        console.print(table)


def _reference_lines(pv) -> list[tuple[str, str]]:
    """``show``'s line on a learned reference point: what it was fitted on, with its R^2 at the vector's layer."""
    if pv.reference is None:
        return []
    ref = pv.meta.get("learned_reference")
    if not isinstance(ref, dict):
        return [("reference", "learned (the sidecar does not say from what)")]
    r2 = ref.get("r2")
    fit = f", R^2 {r2[pv.layer]:.2f} at layer {pv.layer}" if isinstance(r2, list) and pv.layer < len(r2) else ""
    return [
        (
            "reference",
            f"learned from the neutral answers of {', '.join(ref.get('from', {}))} ({ref.get('answers', '?')} answers, alpha {ref.get('alpha', '?')}{fit})",
        )
    ]


def json_short(value) -> str:
    import json

    return json.dumps(value, sort_keys=True) if value is not None else "-"


@vectors.command("import")
@click.argument("file", type=click.Path())
@click.option("--trait", required=True, help="Name to store the vector under (e.g. evil).")
@click.option("--layer", required=True, type=int, help="Layer to use with it (the paper: 20 for evil on Qwen2.5-7B-Instruct).")
@click.option("--model", "-m", default=None, help="The model it was made for: Hugging Face id or local folder (default: the embedded model).")
@click.option("--out", "out_dir", default=None, type=click.Path(), help="Folder to write it to (default: vectors/<model>/).")
@click.option("--trust-remote-code", is_flag=True, help="Allow a model's own Python code to run when reading its config.")
@handle_errors
def import_(file, trait, layer, model, out_dir, trust_remote_code) -> None:
    """Import a published .pt persona vector (a [layers + 1, hidden] tensor, read with weights_only=True)."""
    from auditor.vectors.manage import import_vector

    pv = import_vector(file, trait, layer, model, out_dir, trust_remote_code)
    click.echo(f"imported {file} as {trait} (layer {layer}, shape {list(pv.vector.shape)}) -> {pv.path}")
    click.echo("it has no calibration: scan flags need --threshold, or calibrate it with audit extract's --calibrate on your own vector")


@vectors.command("check")
@click.argument("trait")
@model_options
@click.option("--vectors", "folder", default=None, type=click.Path(), help="Vector file or folder (default: vectors/<model>/).")
@click.option(
    "--alphas",
    default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS),
    show_default=True,
    help="Steering strengths, comma-separated; 32 adds one typical residual norm.",
)
@click.option("--layer", default=None, type=int, help="Steer at this layer (default: the vector's recommended layer).")
@click.option("--questions", "n_questions", default=None, type=int, help="Use only the first N evaluation questions (default: all).")
@click.option("--max-new-tokens", default=DEFAULT_MAX_NEW_TOKENS, show_default=True, type=int, help="Length of each steered answer.")
@judge_options
@click.option("--examples/--no-examples", "show_examples", default=True, show_default=True, help="Print the first steered answer at each alpha.")
@handle_errors
def check(
    trait,
    model,
    dtype,
    device,
    trust_remote_code,
    layers_path,
    folder,
    alphas,
    layer,
    n_questions,
    max_new_tokens,
    judge,
    judge_url,
    judge_model,
    show_examples,
) -> None:
    """Steer the model with TRAIT's vector and show that expression rises with alpha.

    For each alpha, answers the definition's evaluation questions (greedy) while adding
    alpha * s * v[l]/||v[l]|| to the residual stream at layer l, where s is the median
    residual norm at l divided by 32. Expression is the judge's score, or without a judge
    the answers' own projection on the vector (read without steering); the preference
    column is the log-likelihood margin of the written eliciting answers over the
    suppressing ones. Exits 1 when expression does not rise from each alpha to the next.
    """
    from rich.console import Console

    from auditor.model import load_model
    from auditor.vectors.judges import make_judge
    from auditor.vectors.manage import find_vector
    from auditor.vectors.persona import load_vector
    from auditor.vectors.steering import ALPHA_UNIT, steering_check
    from auditor.vectors.traits import load_trait

    alpha_values = _parse_alphas(alphas)
    definition = load_trait(trait)
    lm = load_model(model, dtype=dtype, device=device, trust_remote_code=trust_remote_code, layers_path=layers_path)
    pv = load_vector(find_vector(definition.name, lm.name, folder))
    judge_obj = make_judge(judge, lm=lm, url=judge_url, model=judge_model)
    result = steering_check(lm, pv, definition, alpha_values, judge=judge_obj, max_new_tokens=max_new_tokens, n_questions=n_questions, layer=layer)
    console = Console()
    n_q = len(definition.evaluation_questions[: n_questions or None])
    title = f"{definition.name}: steering at layer {result.layer} of {lm.name} ({n_q} evaluation questions, greedy, {max_new_tokens} tokens)"
    console.print(_steering_table(result, title, judge_obj.enabled, show_examples))
    console.print(f"scale: median residual norm at layer {result.layer} is {result.residual_norm:.1f}; alpha 1 adds {result.scale:.2f} (norm / {ALPHA_UNIT:g})")
    rises = result.rises()
    label = "judge score" if judge_obj.enabled else "projection"
    extra = ""
    if result.rows and result.rows[0].preference is not None:
        extra = f"; preference {'rises' if result.rises('preference') else 'does NOT rise'} monotonically"
    if rises:
        console.print(f"[green]expression ({label}) rises monotonically with alpha[/]{extra}")
    else:
        console.print(f"[red]expression ({label}) does NOT rise monotonically with alpha[/]{extra}")
        sys.exit(1)


def _parse_alphas(alphas: str) -> list[float]:
    """``"-8,-4,0,4,8"`` as sorted floats; at least two."""
    try:
        alpha_values = sorted(float(a) for a in alphas.split(",") if a.strip())
    except ValueError:
        raise click.BadParameter(f"{alphas!r}: expected numbers separated by commas, e.g. -8,-4,0,4,8", param_hint="--alphas") from None
    if len(alpha_values) < 2:
        raise click.BadParameter("give at least two alphas", param_hint="--alphas")
    return alpha_values


def _steering_table(result, title: str, judged: bool, show_examples: bool):
    """One row per alpha: added norm, judge score (when ``judged``), projection, preference (when measured), distinct tokens, first answer."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("alpha", justify="right")
    table.add_column("added norm", justify="right")
    if judged:
        table.add_column("judge score", justify="right")
    table.add_column("projection", justify="right")
    if result.rows and result.rows[0].preference is not None:
        table.add_column("preference", justify="right")
    table.add_column("distinct tokens", justify="right")
    if show_examples:
        table.add_column("first answer", overflow="fold", max_width=60)
    for r in result.rows:
        cells = [f"{r.alpha:+g}", f"{r.added_norm:.1f}"]
        if judged:
            cells.append("-" if r.judge is None else f"{r.judge:.1f}")
        cells.append(f"{r.projection:+.2f}")
        if r.preference is not None:
            cells.append(f"{r.preference:+.3f}")
        cells.append(f"{r.distinct:.2f}")
        if show_examples:
            cells.append(" ".join(r.example.split())[:160])
        table.add_row(*cells)
    return table

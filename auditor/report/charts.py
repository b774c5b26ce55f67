"""Inline SVG charts. Only numbers and our own labels go into them; colours come from CSS classes."""

from __future__ import annotations

import math

from auditor.report.data import Histogram
from auditor.report.markup import Markup, attr_escape

W, H = 1100, 230
LEFT, RIGHT, TOP, BOTTOM = 44, 16, 46, 32


def fmt_num(x: float, digits: int = 3) -> str:
    """Stable, compact number text; a real minus sign (U+2212) reads better than a hyphen."""
    text = f"{x:.{digits}f}"
    if text.lstrip("-").strip("0.") == "":
        text = text.lstrip("-")  # no "-0.000"
    return text.replace("-", "\u2212")


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 5 x 10^k steps) covering [lo, hi]."""
    span = hi - lo
    if span <= 0 or not math.isfinite(span):
        return [lo]
    raw = span / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    k = 0
    while first + k * step <= hi + 1e-9 * span:
        ticks.append(round(first + k * step, 12))
        k += 1
    return ticks


def _tick_digits(ticks: list[float]) -> int:
    if len(ticks) < 2:
        return 2
    step = abs(ticks[1] - ticks[0])
    return max(0, min(4, -math.floor(math.log10(step)) + (1 if step / 10 ** math.floor(math.log10(step)) == 2.5 else 0)))


# long: one SVG drawn in order (axes, bars, three marker lines, labels); split, it would pass a dozen coordinates around.
def histogram_svg(hist: Histogram, score_label: str, threshold: float | None, calibration_mean: float | None, mean: float | None, title: str) -> Markup:
    """Bars of the score distribution; bins above the threshold in the flag colour; lines for
    the threshold, the dataset mean and the calibration mean (marks off the axis get an arrow)."""
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    top_count = max(hist.counts) or 1

    def x_of(v: float) -> float:
        return LEFT + (v - hist.lo) / (hist.hi - hist.lo) * pw

    parts = [
        f'<svg class="hist" viewBox="0 0 {W} {H}" role="img" aria-label="{attr_escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{attr_escape(title)}</title>",
    ]
    # Horizontal grid at round counts.
    for tick in nice_ticks(0, top_count, 4):
        if tick <= 0 or tick != int(tick):
            continue
        y = TOP + ph - tick / top_count * ph
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{W - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{int(tick):,}</text>')
    bw = pw / len(hist.counts)
    for i, c in enumerate(hist.counts):
        lo = hist.lo + i * hist.width
        hi = lo + hist.width
        centre = (lo + hi) / 2
        over = threshold is not None and centre > threshold
        h = c / top_count * ph
        cls = "bar over" if over else "bar"
        parts.append(
            f'<rect class="{cls}" x="{LEFT + i * bw + 0.5:.1f}" y="{TOP + ph - h:.1f}" width="{max(bw - 1, 0.5):.1f}" height="{h:.1f}">'
            f"<title>{fmt_num(lo)} to {fmt_num(hi)}: {c} sample{'s' if c != 1 else ''}</title></rect>"
        )
    parts.append(f'<line class="axisline" x1="{LEFT}" x2="{W - RIGHT}" y1="{TOP + ph}" y2="{TOP + ph}"/>')
    ticks = nice_ticks(hist.lo, hist.hi)
    digits = _tick_digits(ticks)
    for t in ticks:
        x = x_of(t)
        parts.append(f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP + ph}" y2="{TOP + ph + 4}"/>')
        parts.append(f'<text class="axis" x="{x:.1f}" y="{TOP + ph + 16}" text-anchor="middle">{fmt_num(t, digits)}</text>')
    parts.append(f'<text class="axis" x="{W - RIGHT}" y="{H - 1}" text-anchor="end">{attr_escape(score_label)}</text>')
    # Marks, each on its own label row so close values do not overwrite each other.
    marks = [("thr", "threshold", threshold), ("mean", "dataset mean", mean), ("cal", "calibration mean", calibration_mean)]
    row = 0
    for cls, name, value in marks:
        if value is None:
            continue
        y_label = 13 + row * 15
        row += 1
        label = f"{name} {'+' if cls != 'thr' and value > 0 and fmt_num(value).strip('0.') else ''}{fmt_num(value)}"
        if value < hist.lo or value > hist.hi:
            left = value < hist.lo
            x = LEFT if left else W - RIGHT
            arrow = f"\u2190 {label}" if left else f"{label} \u2192"
            parts.append(f'<text class="mark {cls}" x="{x}" y="{y_label}" text-anchor="{"start" if left else "end"}">{arrow}</text>')
            continue
        x = x_of(value)
        parts.append(f'<line class="mark {cls}" x1="{x:.1f}" x2="{x:.1f}" y1="{y_label + 3}" y2="{TOP + ph}"/>')
        anchor = "start" if x < LEFT + pw * 0.7 else "end"
        dx = 4 if anchor == "start" else -4
        parts.append(f'<text class="mark {cls}" x="{x + dx:.1f}" y="{y_label}" text-anchor="{anchor}">{label}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))


def rate_bar(rate: float) -> Markup:
    """A small horizontal bar for a rate in [0, 1]."""
    rate = min(max(rate, 0.0), 1.0)
    return Markup(
        f'<svg class="ratebar" viewBox="0 0 60 8" aria-hidden="true" xmlns="http://www.w3.org/2000/svg">'
        f'<rect class="track" x="0" y="0" width="60" height="8" rx="2"/><rect class="fill" x="0" y="0" width="{60 * rate:.1f}" height="8" rx="2"/></svg>'
    )

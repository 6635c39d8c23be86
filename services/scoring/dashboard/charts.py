"""A small SVG charting library for the dashboard: sparklines, score history with
band zones, KPI trend lines, explanation bars and the relationship heatmap.

Pure functions: data in, SVG markup out (escaped). Colours are from a palette
that stays distinguishable for the common colour-vision deficiencies, and every
chart has a <title> and an aria-label so screen readers can announce it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

# Okabe–Ito derived palette: readable by people with colour-vision deficiencies.
BAND_COLOURS = {"green": "#1b7f4b", "yellow": "#b8860b", "red": "#c0392b", None: "#7f8c8d"}
BAND_FILLS = {"green": "#e3f4ea", "yellow": "#fbf1d5", "red": "#fbe3e0"}
SERIES = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00")


def _num(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def sparkline(
    values: Sequence[float | None],
    *,
    width: int = 120,
    height: int = 28,
    band: str | None = None,
    label: str = "score trend",
) -> str:
    """A line of the last N values (None = no score that day, a gap)."""
    colour = BAND_COLOURS.get(band, BAND_COLOURS[None])
    pts = [(i, v) for i, v in enumerate(values) if v is not None]
    if len(pts) < 2:
        return (
            f'<svg class="spark" width="{width}" height="{height}" role="img" '
            f'aria-label="{escape(label)}: not enough data"><title>no history yet</title></svg>'
        )
    n = max(len(values) - 1, 1)
    path = []
    prev = None
    for i, v in pts:
        x = i / n * (width - 2) + 1
        y = height - 1 - (v / 100) * (height - 2)
        path.append(("M" if prev is None or i - prev > 1 else "L") + f"{_num(x)},{_num(y)}")
        prev = i
    last = pts[-1][1]
    return (
        f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{escape(label)}"><title>{escape(label)}: last '
        f'{_num(last)}</title><path d="{" ".join(path)}" fill="none" stroke="{colour}" '
        f'stroke-width="1.5"/></svg>'
    )


@dataclass(frozen=True)
class Point:
    day: str
    value: float | None


def history_chart(
    points: Sequence[Point], *, green: float, yellow: float, width: int = 720, height: int = 220
) -> str:
    """Score (0–100) per day over band zones (red below ``yellow``, yellow, green)."""
    pad_l, pad_r, pad_t, pad_b = 34, 10, 10, 24
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def y(v: float) -> float:
        return pad_t + h - v / 100 * h

    zones = [("red", 0, yellow), ("yellow", yellow, green), ("green", green, 100)]
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="score history with band zones"><title>Score history</title>'
    ]
    for band, lo, hi in zones:
        parts.append(
            f'<rect x="{pad_l}" y="{_num(y(hi))}" width="{w}" '
            f'height="{_num(y(lo) - y(hi))}" fill="{BAND_FILLS[band]}"/>'
        )
    for tick in (0, yellow, green, 100):
        parts.append(
            f'<text x="{pad_l - 4}" y="{_num(y(tick) + 4)}" text-anchor="end" '
            f'class="axis">{_num(tick)}</text>'
        )
    n = max(len(points) - 1, 1)
    path, prev = [], None
    for i, p in enumerate(points):
        if p.value is None:
            prev = None
            continue
        x = pad_l + i / n * w
        path.append(("M" if prev is None else "L") + f"{_num(x)},{_num(y(p.value))}")
        prev = i
    if path:
        parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="#1f2d3d" stroke-width="2"/>')
    for i, p in enumerate(points):
        if p.value is not None:
            x = pad_l + i / n * w
            parts.append(
                f'<circle cx="{_num(x)}" cy="{_num(y(p.value))}" r="2.2" '
                f'fill="#1f2d3d"><title>{escape(p.day)}: {_num(p.value)}</title>'
                f"</circle>"
            )
    if points:
        parts.append(
            f'<text x="{pad_l}" y="{height - 6}" class="axis">{escape(points[0].day)}'
            f'</text><text x="{pad_l + w}" y="{height - 6}" text-anchor="end" '
            f'class="axis">{escape(points[-1].day)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def lines_chart(
    days: Sequence[str],
    series: dict[str, Sequence[float | None]],
    *,
    width: int = 720,
    height: int = 200,
    label: str = "KPI trends",
) -> str:
    """Several series over the same days, each scaled to its own maximum shown in
    the legend (so DAU and MAU are both readable)."""
    pad_l, pad_r, pad_t, pad_b = 10, 10, 24, 22
    w, h = width - pad_l - pad_r, height - pad_t - pad_b
    n = max(len(days) - 1, 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}"><title>{escape(label)}</title>'
    ]
    legend_x = pad_l
    for k, (name, values) in enumerate(series.items()):
        colour = SERIES[k % len(SERIES)]
        present = [v for v in values if v is not None]
        top = max(present) if present else 0
        scale = top if top > 0 else 1
        path, prev = [], None
        for i, v in enumerate(values):
            if v is None:
                prev = None
                continue
            x = pad_l + i / n * w
            yy = pad_t + h - (v / scale) * h
            path.append(("M" if prev is None else "L") + f"{_num(x)},{_num(yy)}")
            prev = i
        if path:
            parts.append(
                f'<path d="{" ".join(path)}" fill="none" stroke="{colour}" stroke-width="1.8"/>'
            )
        text = f"{name} (max {_num(top)})"
        parts.append(
            f'<rect x="{legend_x}" y="6" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="15" class="axis">{escape(text)}</text>'
        )
        legend_x += 14 + 7 * len(text) + 16
    if days:
        parts.append(
            f'<text x="{pad_l}" y="{height - 6}" class="axis">{escape(days[0])}</text>'
            f'<text x="{pad_l + w}" y="{height - 6}" text-anchor="end" class="axis">'
            f"{escape(days[-1])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class Bar:
    label: str
    contribution: float
    left_on_table: float
    detail: str


def explanation_bars(bars: Sequence[Bar], *, width: int = 720) -> str:
    """One row per measure: the points it contributed (solid) and what it left on
    the table (hatched), on a common scale of score points."""
    row, pad_l, pad_r = 22, 210, 70
    height = row * len(bars) + 8
    total = max((b.contribution + b.left_on_table for b in bars), default=0) or 1
    w = width - pad_l - pad_r
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="score explanation by measure"><title>Score explanation</title>'
        '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" '
        'stroke="#c0392b" stroke-width="2"/></pattern></defs>'
    ]
    for i, b in enumerate(bars):
        y = 4 + i * row
        cw = b.contribution / total * w
        lw = b.left_on_table / total * w
        parts.append(
            f'<text x="{pad_l - 6}" y="{y + 14}" text-anchor="end" class="axis">'
            f"{escape(b.label)}</text>"
        )
        parts.append(
            f'<rect x="{pad_l}" y="{y + 3}" width="{_num(cw)}" height="14" '
            f'fill="#1b7f4b"><title>{escape(b.detail)}</title></rect>'
        )
        parts.append(
            f'<rect x="{_num(pad_l + cw)}" y="{y + 3}" width="{_num(lw)}" height="14" '
            f'fill="url(#hatch)" stroke="#c0392b" stroke-width="0.5"><title>left on '
            f"the table: {_num(b.left_on_table)} points</title></rect>"
        )
        parts.append(
            f'<text x="{_num(pad_l + cw + lw + 4)}" y="{y + 14}" class="axis">'
            f"+{_num(b.contribution)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


@dataclass(frozen=True)
class HeatRow:
    label: str
    marks: str  # e.g. "★ champion", "left the company"
    inbound: Sequence[int]
    outbound: Sequence[int]


def heatmap(rows: Sequence[HeatRow], weeks: Sequence[str], *, cell: int = 18) -> str:
    """Stakeholders × weeks: each cell split in inbound (top, blue) and outbound
    (bottom, orange) touches; an empty row is a silent stakeholder."""
    pad_l, pad_t = 230, 26
    width = pad_l + cell * len(weeks) + 10
    height = pad_t + (cell + 6) * len(rows) + 6
    top_in = max((v for r in rows for v in r.inbound), default=0) or 1
    top_out = max((v for r in rows for v in r.outbound), default=0) or 1
    parts = [
        f'<svg class="chart heatmap" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="relationship heatmap: stakeholders by week"><title>Relationship '
        f"heatmap (inbound top, outbound bottom)</title>"
    ]
    for j, wk in enumerate(weeks):
        if j % 2 == 0:
            parts.append(
                f'<text x="{pad_l + j * cell + cell / 2}" y="14" text-anchor="middle" '
                f'class="axis small">{escape(wk[5:])}</text>'
            )
    for i, r in enumerate(rows):
        y = pad_t + i * (cell + 6)
        silent = sum(r.inbound) == 0
        cls = "axis silent" if silent else "axis"
        label = r.label + (f" — {r.marks}" if r.marks else "") + (" (silent)" if silent else "")
        parts.append(
            f'<text x="{pad_l - 6}" y="{y + cell * 0.7}" text-anchor="end" '
            f'class="{cls}">{escape(label)}</text>'
        )
        for j in range(len(weeks)):
            vin = r.inbound[j] if j < len(r.inbound) else 0
            vout = r.outbound[j] if j < len(r.outbound) else 0
            x = pad_l + j * cell
            a_in = 0.12 + 0.88 * vin / top_in if vin else 0
            a_out = 0.12 + 0.88 * vout / top_out if vout else 0
            parts.append(
                f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell / 2 - 1}" '
                f'fill="#0072b2" fill-opacity="{_num(a_in) if vin else "0.04"}">'
                f"<title>{escape(weeks[j])}: {vin} inbound</title></rect>"
                f'<rect x="{x}" y="{y + cell / 2}" width="{cell - 2}" height="{cell / 2 - 1}" '
                f'fill="#e69f00" fill-opacity="{_num(a_out) if vout else "0.04"}">'
                f"<title>{escape(weeks[j])}: {vout} outbound</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)

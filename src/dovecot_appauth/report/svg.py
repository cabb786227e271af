"""Report charts: inline SVG (columns over time, horizontal bars), no library."""

from __future__ import annotations

import html
from typing import Any

from .data import TOP

PALETTE = ("#2f6db5", "#e07b39", "#3a9a5b", "#c0392b", "#8e5bb5", "#7f8c8d", "#d4a017", "#16a0a0")


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def svg_columns(title: str, points: list[list[Any]], width: int = 1000, height: int = 240) -> str:
    """A column chart (one column per point, e.g. per hour) as an inline SVG."""
    left, right, top, bottom = 44, 10, 28, 46
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max((p[1] for p in points), default=0) or 1
    n = max(len(points), 1)
    step = plot_w / n
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" font-family="sans-serif">',
             f"<title>{_esc(title)}</title>",
             f'<text x="{left}" y="18" font-size="14" font-weight="bold" fill="#222">{_esc(title)}</text>']
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end" fill="#555">'
                     f"{_fmt_num(peak * frac)}</text>")
    label_every = max(1, round(n / 12))
    for i, (label, value) in enumerate(points):
        h = plot_h * value / peak
        x = left + i * step
        parts.append(f'<rect x="{x + step * 0.1:.1f}" y="{top + plot_h - h:.1f}" width="{max(step * 0.8, 1):.1f}" '
                     f'height="{h:.1f}" fill="{PALETTE[0]}"><title>{_esc(label)}: {value}</title></rect>')
        if i % label_every == 0:
            short = str(label)[-5:] if len(str(label)) > 5 else str(label)
            parts.append(f'<text x="{x + step / 2:.1f}" y="{top + plot_h + 16}" font-size="10" '
                         f'text-anchor="middle" fill="#555">{_esc(short)}</text>')
    parts.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#888"/>')
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(title: str, points: list[list[Any]], width: int = 1000, bar: int = 22) -> str:
    """Horizontal bars, largest first (at most TOP; the rest summed as "other")."""
    shown = [list(p) for p in points[:TOP]]
    rest = sum(p[1] for p in points[TOP:])
    if rest:
        shown.append([f"other ({len(points) - TOP})", rest])
    left, top = 260, 30
    height = top + max(len(shown), 1) * (bar + 6) + 10
    peak = max((p[1] for p in shown), default=0) or 1
    plot_w = width - left - 60
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}" font-family="sans-serif">',
             f"<title>{_esc(title)}</title>",
             f'<text x="10" y="18" font-size="14" font-weight="bold" fill="#222">{_esc(title)}</text>']
    if not shown:
        parts.append(f'<text x="10" y="{top + 16}" font-size="12" fill="#555">no logins</text>')
    for i, (label, value) in enumerate(shown):
        y = top + i * (bar + 6)
        w = max(plot_w * value / peak, 1)
        text = str(label) if len(str(label)) <= 38 else str(label)[:36] + ".."
        parts.append(f'<text x="{left - 8}" y="{y + bar * 0.7:.1f}" font-size="12" text-anchor="end" '
                     f'fill="#222">{_esc(text)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" '
                     f'fill="{PALETTE[(i + 1) % len(PALETTE)]}"><title>{_esc(label)}: {value}</title></rect>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + bar * 0.7:.1f}" font-size="12" fill="#222">'
                     f"{value}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _fmt_num(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"

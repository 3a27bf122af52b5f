"""A self-contained HTML report: the matrix plus inline SVG plots drawn here (no JavaScript, no CDN)."""

from __future__ import annotations

import html
import math
import time
from collections.abc import Sequence

from sparkhelpers.bench.matrix import Matrix, cell_lines, col_label, row_label

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22"]
W, H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 340, 64, 16, 30, 46


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 2) if start + i * step <= hi * 1.0001]


def _num(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.1f}"


def _point(p: tuple) -> tuple:
    """(x, y[, y half-width[, label]]) -> (x, y, half-width or None, label or "")."""
    return (p[0], p[1], p[2] if len(p) > 2 else None, p[3] if len(p) > 3 else "")


def _point_marks(cx: float, cy: float, top: float | None, bottom: float | None, color: str, title: str,
                 text: str, flip: bool) -> list[str]:
    """One point: its 95% CI error bar (when it has one), the marker, and its label (left of it at the edge)."""
    out = []
    if top is not None and bottom is not None:
        out.append(f'<g class="errbar" stroke="{color}" stroke-width="1.2">'
                   f'<line x1="{cx:.1f}" y1="{top:.1f}" x2="{cx:.1f}" y2="{bottom:.1f}"/>'
                   f'<line x1="{cx - 4:.1f}" y1="{top:.1f}" x2="{cx + 4:.1f}" y2="{top:.1f}"/>'
                   f'<line x1="{cx - 4:.1f}" y1="{bottom:.1f}" x2="{cx + 4:.1f}" y2="{bottom:.1f}"/>'
                   f"<title>95% CI</title></g>")
    out.append(f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="{color}"><title>{html.escape(title)}</title>'
               "</circle>")
    if text:
        out.append(f'<text class="point-label" x="{cx - 6 if flip else cx + 6:.1f}" y="{cy - 6:.1f}" font-size="10" '
                   f'text-anchor="{"end" if flip else "start"}" fill="{color}">{html.escape(text)}</text>')
    return out


def svg_chart(title: str, series: Sequence[tuple[str, list[tuple]]], x_label: str, y_label: str,
              log2_x: bool = False) -> str:
    """A line chart with markers; ``log2_x`` for concurrency ladders (1, 4, 16, 64...). A point is
    (x, y[, y's 95% CI half-width[, label]]): the half-width is drawn as an error bar, the label beside it."""
    series = [(name, [_point(p) for p in pts]) for name, pts in series]
    pts = [(x, y + (e or 0.0)) for _, s in series for x, y, e, _ in s
           if x is not None and y is not None and (not log2_x or x > 0)]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'role="img" aria-label="{html.escape(title)}">',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14" font-weight="bold">{html.escape(title)}'
           "</text>"]
    if not pts:
        out.append(f'<text x="{W / 2}" y="{H / 2}" text-anchor="middle" fill="#888">no data</text></svg>')
        return "\n".join(out)
    fx = (lambda v: math.log2(v)) if log2_x else (lambda v: v)
    xs, ys = [fx(x) for x, _ in pts], [y for _, y in pts]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = 0.0, max(ys) * 1.08 or 1.0
    pw, ph = W - PAD_L - PAD_R, H - PAD_T - PAD_B

    def px(v: float) -> float:
        return PAD_L + (fx(v) - x_lo) / (x_hi - x_lo) * pw

    def py(v: float) -> float:
        return PAD_T + ph - (v - y_lo) / (y_hi - y_lo) * ph

    out.append(f'<rect x="{PAD_L}" y="{PAD_T}" width="{pw}" height="{ph}" fill="#fafafa" stroke="#ccc"/>')
    for t in _ticks(y_lo, y_hi):
        y = py(t)
        out.append(f'<line x1="{PAD_L}" y1="{y:.1f}" x2="{PAD_L + pw}" y2="{y:.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_num(t)}</text>')
    xticks = sorted({x for x, _ in pts}) if log2_x else _ticks(x_lo, x_hi)
    if not log2_x:  # the points' own x may lie outside the padded range of a single-x series
        x_lo, x_hi = min(x_lo, *xticks), max(x_hi, *xticks)
    for t in xticks:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" y1="{PAD_T}" x2="{x:.1f}" y2="{PAD_T + ph}" stroke="#eee"/>'
                   f'<text x="{x:.1f}" y="{PAD_T + ph + 16}" text-anchor="middle" font-size="11">{_num(t)}</text>')
    out.append(f'<text x="{PAD_L + pw / 2}" y="{H - 8}" text-anchor="middle" font-size="12">'
               f"{html.escape(x_label)}</text>")
    out.append(f'<text transform="translate(14,{PAD_T + ph / 2}) rotate(-90)" text-anchor="middle" '
               f'font-size="12">{html.escape(y_label)}</text>')
    for i, (label, s) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        dash = "" if i < len(PALETTE) else ' stroke-dasharray="5,3"'
        good = sorted((p for p in s if p[0] is not None and p[1] is not None and (not log2_x or p[0] > 0)),
                      key=lambda p: p[0])
        if not good:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y, _, _ in good)
        out.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{dash}>'
                   f"<title>{html.escape(label)}</title></polyline>")
        for x, y, err, text in good:
            top = py(y + err) if err else None
            out += _point_marks(px(x), py(y), top, py(max(y_lo, y - err)) if err else None, color,
                                f"{label}: {_num(x)}, {_num(y)}{f' ±{_num(err)}' if err else ''}", text,
                                flip=px(x) > PAD_L + pw - 36)
    return "\n".join(out) + "\n</svg>"


def legend(labels: Sequence[str]) -> str:
    items = [f'<span class="key"><span class="swatch" style="background:{PALETTE[i % len(PALETTE)]}"></span>'
             f"{html.escape(label)}</span>" for i, label in enumerate(labels)]
    return '<div class="legend">' + "".join(items) + "</div>"


def series_for_cell(m: Matrix, cell_name: str, x_field: str | None, y_field: str) -> list[tuple[str, list[tuple]]]:
    """One series per row (model x variant) in one workload cell: (x, y, y's CI half-width, "c=N") points."""
    out = []
    for r in m.rows:
        pts = []
        for c in (c for c in m.cols if c[0] == cell_name):
            cell = m.cells.get((r, c))
            if cell is None or cell.invalid:
                continue
            x = c[1] if x_field is None else cell.stats[x_field].mean
            pts.append((x, cell.stats[y_field].mean, cell.stats[y_field].half_width, f"c={c[1]}"))
        if pts:
            out.append((row_label(r), pts))
    return out


PLOTS = (("Output throughput vs concurrency", None, "output_tok_s", "concurrency", "output tok/s", True),
         ("Median TTFT vs load", None, "ttft_p50_ms", "concurrency", "median TTFT (ms)", True),
         ("Throughput vs per-user speed", "per_user_tok_s", "output_tok_s", "per-user tok/s (1000/median TPOT)",
          "output tok/s", False))


def cell_plots(m: Matrix) -> str:
    """One block of charts per workload cell (input/output lengths), error bars from the 95% CIs."""
    blocks = []
    for cell_name in sorted({c[0] for c in m.cols}):
        charts = []
        for ptitle, xf, yf, xl, yl, log2 in PLOTS:
            series = series_for_cell(m, cell_name, xf, yf)
            charts.append(f'<div class="plot">{svg_chart(f"{ptitle} ({cell_name})", series, xl, yl, log2)}'
                          f"{legend([s[0] for s in series])}</div>")
        blocks.append(f'<h3>Workload {html.escape(cell_name)}</h3><div class="plots">{"".join(charts)}</div>')
    return "".join(blocks)


def memory_lows(meta: dict) -> str:
    """Each node's lowest MemAvailable over the row's runs, lowest first."""
    lows = sorted((meta.get("mem_low_gib") or {}).items(), key=lambda kv: kv[1])
    return html.escape(", ".join(f"{node} {gib:.1f}" for node, gib in lows)) or "-"


def metadata_html(m: Matrix) -> str:
    """Per row: image, config hash, nodes, TP/PP, tools and the dates of its runs."""
    if not m.meta:
        return ""
    head = "<tr><th>model [variant]</th><th>image</th><th>config hash</th><th>nodes</th><th>TP/PP</th>" \
           "<th>tools</th><th>lowest MemAvailable (GiB)</th><th>runs from</th><th>to</th></tr>"
    rows = []
    for r in m.rows:
        meta = m.meta.get(r, {})

        def join(key: str, meta: dict = meta) -> str:
            return html.escape(", ".join(str(v) for v in meta.get(key, [])) or "-")

        rows.append(f"<tr><th>{html.escape(row_label(r))}</th><td>{join('images')}</td><td><code>"
                    f"{join('config_hashes')}</code></td><td>{join('nodes')}</td><td>{join('layouts')}</td>"
                    f"<td>{join('tools')}</td><td>{memory_lows(meta)}</td>"
                    f"<td>{html.escape(meta.get('first') or '-')}</td>"
                    f"<td>{html.escape(meta.get('last') or '-')}</td></tr>")
    return f'<h2>Runs</h2><table class="meta-table">{head}{"".join(rows)}</table>'



CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px} h3{font-size:15px;margin:18px 0 6px}
.meta{color:#666;font-size:13px}
table{border-collapse:collapse;font-size:12.5px} th,td{border:1px solid #d0d0d0;padding:6px 8px;vertical-align:top}
th{background:#f0f3f7;text-align:left} td.best{background:#e7f6e7} td.invalid{background:#eee;color:#999}
td .big{font-weight:600;font-size:13.5px} .delta-up{color:#187a18} .delta-down{color:#b22}
.plots{display:flex;flex-wrap:wrap;gap:18px} .plot{border:1px solid #e2e2e2;padding:6px;background:#fff;width:560px}
.legend{font-size:12px;margin:6px 0 0;display:flex;flex-wrap:wrap;gap:4px 14px}
.swatch{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-2px;border-radius:2px}
.note{font-size:12.5px;color:#555;max-width:900px}
"""


def cell_html(cell) -> str:
    if cell is None:
        return "<td>-</td>"
    lines = [ln for ln in cell_lines(cell) if ln != "[INVALID]"]
    head = html.escape(lines[0].replace(" *best*", ""))
    if cell.delta_pct is not None:
        cls = "delta-up" if cell.delta_pct >= 0 else "delta-down"
        head = head.split(" (")[0] + f' <span class="{cls}">({cell.delta_pct:+.1f}%)</span>'
    body = "<br>".join(html.escape(ln) for ln in lines[1:])
    classes = "invalid" if cell.invalid else "best" if cell.best else ""
    title = html.escape("; ".join(cell.reasons)) if cell.reasons else ""
    badge = " &#9733;" if cell.best else ""
    inval = "<br><b>invalid run</b>" if cell.invalid else ""
    return (f'<td class="{classes}" title="{title}"><span class="big">{head}{badge}</span><br>{body}{inval}</td>')


def to_html(m: Matrix, title: str = "Benchmark report", source: str = "") -> str:
    header = "".join(f"<th>{html.escape(col_label(c))}</th>" for c in m.cols)
    rows = "".join(f"<tr><th>{html.escape(row_label(r))}</th>" + "".join(cell_html(m.cells.get((r, c)))
                                                                       for c in m.cols) + "</tr>" for r in m.rows)
    base = f" Deltas: output tok/s against <b>{html.escape(m.baseline)}</b>." if m.baseline else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<div class="meta">{len(m.rows)} configuration(s) x {len(m.cols)} workload column(s). Source: {html.escape(source)}.
Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by sparkhelpers.</div>
{metadata_html(m)}
<h2>Plots</h2>
<p class="note">Error bars: 95% confidence intervals over repeats (none for a single run); each point is
labelled with its concurrency.</p>
{cell_plots(m)}
<h2>Matrix</h2>
<p class="note">Each cell: output tok/s (mean ± 95% confidence half-width over repeats), per-user tok/s,
median / p99 TTFT, p99 TPOT, failed/total requests and the number of runs. Green with &#9733; = highest output
tok/s in its column. Grey = every run in the cell was marked invalid by the client's self-check (hover for the
reason); invalid runs are left out of the statistics while valid ones exist.{base}
Definitions are vllm bench serve's (see README, Benchmarks).</p>
<table><tr><th>model [variant]</th>{header}</tr>{rows}</table>
</body></html>
"""

"""report.html of a tuning job: the decision first (objective, guard, winner, the rule), every candidate's
figures, the decision trail in order, then the benchmark's own matrix and plots of every run
(bench.matrix + bench.report, the control as the baseline row)."""

from __future__ import annotations

import html
from pathlib import Path


def _fmt(value, digits: int = 4) -> str:  # noqa: ANN001
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return html.escape(str(value))


def candidates_table(record: dict) -> str:
    head = ("<tr><th>candidate</th><th>origin</th><th>recipe id</th><th>run</th><th>status</th><th>objective "
            "median</th><th>scatter</th><th>guard median</th><th>memory GiB</th><th>prefix hit</th>"
            "<th>preemptions</th><th>start s</th><th>refused / message</th></tr>")
    rows = []
    for c in record.get("candidates", []):
        runs = c.get("measurements") or [{}]
        for m in runs:
            eng = m.get("engine") or {}
            note = c.get("refused") or m.get("message") or ""
            run = f"{m.get('run', '')}{' (confirm)' if m.get('confirmation') else ''}" if m else ""
            rows.append(f"<tr><td>{html.escape(c['name'])}</td><td>{html.escape(c.get('origin', ''))}</td>"
                        f"<td><code>{html.escape(c.get('recipe_id') or '-')}</code></td><td>{run}</td>"
                        f"<td>{html.escape(m.get('status', 'refused' if c.get('refused') else 'not run'))}</td>"
                        f"<td>{_fmt(m.get('median'))}</td><td>{_fmt((m.get('scatter') or 0) * 100, 3)}%</td>"
                        f"<td>{_fmt(m.get('guard_median'))}</td><td>{_fmt(m.get('memory_gib'))}</td>"
                        f"<td>{_fmt(eng.get('prefix_cache_hit_rate'))}</td><td>{_fmt(eng.get('preemptions'))}</td>"
                        f"<td>{_fmt(m.get('start_s'))}</td><td>{html.escape(note)}</td></tr>")
    return f"<h2>Candidates</h2><table>{head}{''.join(rows)}</table>"


def trail_list(record: dict) -> str:
    items = []
    for e in record.get("trail", []):
        what = e.get("candidate", "")
        outcome = e.get("outcome") or ""
        reason = e.get("reason") or e.get("message") or ""
        items.append(f"<li><b>{html.escape(e['step'])}</b> {html.escape(what)}"
                     f"{' vs ' + html.escape(e['against']) if e.get('against') else ''}"
                     f"{': <b>' + html.escape(outcome) + '</b>' if outcome else ''}"
                     f"{' &mdash; ' + html.escape(str(reason)) if reason else ''}</li>")
    return f"<h2>Decision trail</h2><ol class=\"note\">{''.join(items)}</ol>"


def summary_html(record: dict) -> str:
    w = record.get("winner") or {}
    obj, guard = record.get("objective") or {}, record.get("guard") or {}
    kept = "the incumbent is kept" if w.get("kept_incumbent") else f"<b>{html.escape(w.get('name', ''))}</b> wins"
    return (f"<h2>Decision</h2><p>Objective <code>{html.escape(obj.get('text', ''))}</code>, guard "
            f"<code>{html.escape(guard.get('text', 'none') if guard else 'none')}</code>, strategy "
            f"{html.escape(record.get('strategy', ''))}, {record.get('runs', 0)} run(s): {kept} "
            f"(<code>{html.escape(w.get('recipe_id', ''))}</code>, median {_fmt(w.get('median'))}, "
            f"{_fmt((w.get('gain_vs_control') or 0) * 100, 3)}% against the control).</p>"
            "<p class=\"note\">The rule, fixed before any run: a candidate wins only when its median beats the "
            "current best by more than max(5%, the measured scatter of either side), the guard holds, and a "
            "confirmation re-run agrees; a tie keeps the incumbent unless the candidate uses less memory by more "
            "than max(5%, its scatter); "
            "a crash or start timeout is a result and is never retried unchanged; a candidate the memory-fit "
            "estimate or the legal-values schema refuses never runs.</p>")


def render(record: dict, job_dir: Path) -> str:
    from sparkhelpers.bench import ingest, matrix
    from sparkhelpers.bench import report as bench_report

    found = ingest.load_dir(job_dir / "runs") if (job_dir / "runs").is_dir() else []
    ours = summary_html(record) + candidates_table(record) + trail_list(record)
    title = f"Tuning {record.get('id', '')}"
    if not found:
        return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
                f"</title><style>{bench_report.CSS}</style></head><body><h1>{html.escape(title)}</h1>{ours}"
                "<p>No benchmark run finished.</p></body></html>\n")
    m = matrix.build([d for _, d in found], baseline="control")
    page = bench_report.to_html(m, title=title, source=str(job_dir))
    head, sep, tail = page.partition("<body>")
    h1_end = tail.find("</h1>")
    if not sep or h1_end < 0:
        return page.replace("</body>", ours + "</body>")
    h1_end += len("</h1>")
    return f"{head}{sep}{tail[:h1_end]}\n{ours}\n{tail[h1_end:]}"

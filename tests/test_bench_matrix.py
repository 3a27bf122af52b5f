"""Ingest (vllm bench serve and llama-benchy files), the matrix statistics and its renderings."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
import subprocess
from pathlib import Path

import pytest

from sparkhelpers.bench import ingest, matrix, report
from sparkhelpers.errors import SparkError

FIX = Path(__file__).parent / "fixtures" / "bench"
VLLM = sorted(FIX.glob("vllm-*.json"))
BENCHY = FIX / "llama-benchy-0.4.0-truth-pp512-tg128.json"


def doc(model="m", variant="base", cell="1024/128", conc=4, out=100.0, valid=True, failed=0, ttft=200.0):
    return {"model_id": model, "max_concurrency": conc, "output_throughput": out, "completed": 10, "failed": failed,
            "median_ttft_ms": ttft, "p99_ttft_ms": ttft * 1.2, "median_tpot_ms": 20.0, "p99_tpot_ms": 25.0,
            "run": {"valid": valid, "invalid_reasons": [] if valid else ["client CPU 80% of a core > 50%"]},
            "target": {"model": model, "variant": variant}, "workload": {"cell": cell}, "extra": {}}


def test_vllm_file_keeps_its_keys_and_maps_metadata():
    data = json.loads(VLLM[0].read_text())
    (d,) = ingest.normalize(data, str(VLLM[0]))
    assert ingest.detect_kind(data) == "vllm"
    assert d["p99_ttft_ms"] == data["p99_ttft_ms"] and d["output_throughput"] == data["output_throughput"]
    assert "ttfts" not in d and "generated_texts" not in d  # the big arrays stay in the original
    assert d["target"] == {"model": "Qwen/Qwen3-0.6B", "variant": data["variant"]}
    assert d["workload"]["cell"] == "1024/128" and d["workload"]["input_len"] == 1024
    assert d["extra"]["tpot_per_user_tok_s"] == pytest.approx(1000 / data["median_tpot_ms"])


def test_llama_benchy_runs_become_repeats():
    data = json.loads(BENCHY.read_text())
    docs = ingest.normalize(data, str(BENCHY))
    assert ingest.detect_kind(data) == "llama-benchy"
    c64 = [d for d in docs if d["max_concurrency"] == 64]
    assert len(c64) == 3 and [d["run"]["repeat"] for d in c64] == [1, 2, 3]
    b = next(b for b in data["benchmarks"] if b["concurrency"] == 64)
    assert c64[0]["output_throughput"] == b["tg_throughput"]["values"][0]
    assert c64[0]["mean_ttft_ms"] == pytest.approx(sum(b["ttfr"]["values"][:64]) / 64)  # run 1's requests
    assert c64[0]["workload"]["cell"] == "512/128" and c64[0]["p99_ttft_ms"] is None  # it has no percentiles


def test_both_kinds_ingest_into_one_matrix(tmp_path, sparkhelpers_bin):
    r = subprocess.run([*sparkhelpers_bin, "bench", "ingest", *map(str, VLLM), str(BENCHY), "-o", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*sparkhelpers_bin, "bench", "matrix", str(tmp_path), "--format", "json", "--baseline",
                        "baseline"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    cells = json.loads(r.stdout)["cells"]
    assert {(c["model"], c["variant"]) for c in cells} == {("Qwen/Qwen3-0.6B", "baseline"),
                                                           ("Qwen/Qwen3-0.6B", "fp8-kv"), ("truth", "default")}
    fp8 = next(c for c in cells if c["variant"] == "fp8-kv" and c["concurrency"] == 16)
    assert fp8["best"] and fp8["delta_pct"] == pytest.approx(10.05, abs=0.1)
    truth64 = next(c for c in cells if c["model"] == "truth" and c["concurrency"] == 64)
    assert truth64["runs"] == 3 and truth64["output_tok_s_ci95"] is not None
    assert "llama-benchy" in truth64["tools"]


def test_ingest_refuses_files_it_does_not_know(tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    with pytest.raises(SparkError, match="neither a vllm bench serve"):
        ingest.ingest_files([junk], tmp_path / "store")


def test_confidence_half_width_uses_student_t():
    m, hw = matrix.mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and hw == pytest.approx(4.303 / 3 ** 0.5)
    assert matrix.mean_ci([5.0]) == (5.0, None) and matrix.mean_ci([]) == (None, None)
    assert matrix.t95(100) == 1.96


def test_repeats_best_baseline_and_invalid_runs():
    docs = [doc(variant="base", out=100), doc(variant="base", out=110), doc(variant="fast", out=150),
            doc(variant="fast", out=999, valid=False),  # an invalid repeat does not count while valid ones exist
            doc(variant="broken", out=500, valid=False)]  # only invalid runs: shown, never best
    m = matrix.build(docs, baseline="base")
    col = ("1024/128", 4)
    base, fast, broken = (m.cells[(("m", v), col)] for v in ("base", "fast", "broken"))
    assert base.stats["output_tok_s"].mean == 105 and base.runs == 2
    assert fast.stats["output_tok_s"].mean == 150 and fast.runs == 2 and fast.valid_runs == 1
    assert fast.best and not broken.best and broken.invalid
    assert fast.delta_pct == pytest.approx(100 * (150 / 105 - 1))
    assert "[INVALID]" in matrix.to_table(m) and "*best*" in matrix.to_table(m)
    assert "~~invalid~~" in matrix.to_markdown(m)


def test_model_colon_variant_baseline_compares_every_row_with_one_row():
    m = matrix.build([doc(model="a", variant="x", out=100), doc(model="b", variant="y", out=50)], baseline="a:x")
    assert m.cells[(("b", "y"), ("1024/128", 4))].delta_pct == pytest.approx(-50.0)


def test_csv_is_one_row_per_cell():
    m = matrix.build([doc(conc=1), doc(conc=4), doc(variant="v2", conc=4, failed=2)])
    rows = list(csv.DictReader(io.StringIO(matrix.to_csv(m))))
    assert len(rows) == 3 and {r["concurrency"] for r in rows} == {"1", "4"}
    assert next(r for r in rows if r["variant"] == "v2")["failures"] == "2"


def test_html_is_self_contained_with_three_plots():
    docs = [doc(variant=v, conc=c, out=c * k, ttft=100 + c) for v, k in (("a", 10), ("b", 12)) for c in (1, 4, 16)]
    docs.append(doc(variant="c", valid=False))
    text = report.to_html(matrix.build(docs, baseline="a"), source="/results")
    assert text.count("<svg") == 3 and "<script" not in text.lower()  # one workload cell: three charts
    assert not re.search(r"""(src|href)\s*=""", text)  # nothing is fetched
    assert "Throughput vs per-user speed" in text and 'class="invalid"' in text and "&#9733;" in text


def test_svg_chart_handles_empty_and_single_points():
    assert "no data" in report.svg_chart("t", [], "x", "y")
    one = report.svg_chart("t", [("s", [(4, 10.0)])], "x", "y", log2_x=True)
    assert "<circle" in one and "nan" not in one


def test_load_dir_skips_state_and_originals(tmp_path):
    (tmp_path / "sweep-state.json").write_text('{"cells": {}}')
    (tmp_path / "original-x.json").write_text(VLLM[0].read_text())
    (tmp_path / "a.json").write_text(VLLM[0].read_text())
    d = copy.deepcopy(json.loads(VLLM[1].read_text()))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.json").write_text(json.dumps(d))
    assert [p.name for p, _ in ingest.load_dir(tmp_path)] == ["a.json", "b.json"]


def test_engine_metrics_columns_from_each_run():
    def with_engine(d, rate, kv, wait, pre):
        d["engine_metrics"] = {"available": True, "prefix_cache_hit_rate": rate, "peak_kv_cache_usage": kv,
                               "peak_requests_waiting": wait, "preemptions": pre}
        return d

    m = matrix.build([with_engine(doc(), 0.5, 0.3, 2.0, 0.0), with_engine(doc(), 0.7, 0.5, 4.0, 2.0),
                      doc(variant="other")])
    (row,) = [r for r in json.loads(matrix.to_json(m))["cells"] if r["variant"] == "base"]
    assert row["prefix_hit_pct"] == pytest.approx(60.0) and row["kv_peak_pct"] == pytest.approx(40.0)
    assert row["waiting_peak"] == 3.0 and row["preemptions"] == 1.0 and row["prefix_hit_pct_ci95"] is not None
    other = [r for r in json.loads(matrix.to_json(m))["cells"] if r["variant"] == "other"][0]
    assert other["prefix_hit_pct"] is None  # no engine metrics: none invented
    assert "hit 60±" in matrix.to_table(m) and "prefix_hit_pct" in matrix.to_csv(m).splitlines()[0]


def _report_docs() -> list[dict]:
    """Two variants x two workload cells x c=1,4,16, three repeats each (so every point has a CI)."""
    docs = []
    for variant, k in (("baseline", 10.0), ("tier1", 12.5)):
        for cell in ("1024/128", "128/1024"):
            for c in (1, 4, 16):
                for rep, jitter in enumerate((0.9, 1.0, 1.1), 1):
                    d = doc(variant=variant, cell=cell, conc=c, out=c * k * jitter, ttft=100 + c * jitter)
                    d["target"].update(image="vllm/vllm-openai:v0.11.0", nodes=2, tp=2, pp=1,
                                       engine_options={"kv_cache_dtype": "fp8"} if variant == "tier1" else {})
                    d["run"].update(tool="sparkhelpers", started_at=f"2026-12-0{rep}T01:00:00Z")
                    docs.append(d)
    return docs


def test_html_has_a_chart_per_cell_error_bars_labels_and_metadata():
    text = report.to_html(matrix.build(_report_docs(), baseline="baseline"), source="/results")
    assert text.count("<svg") == 6 and "<h3>Workload 1024/128</h3>" in text and "<h3>Workload 128/1024</h3>" in text
    assert text.count('class="errbar"') == 2 * 2 * 3 * 3  # rows x cells x concurrencies x charts
    assert text.count('class="point-label"') == 2 * 2 * 3 * 3 and ">c=16</text>" in text
    assert "vllm/vllm-openai:v0.11.0" in text and "TP2/PP1" in text and "2026-12-01T01:00:00Z" in text
    hashes = {row: meta["config_hashes"] for row, meta in matrix.build(_report_docs()).meta.items()}
    assert hashes[("m", "baseline")] != hashes[("m", "tier1")]  # different engine options, different hash


def test_html_renders_in_headless_chromium_with_error_bars_and_labels(tmp_path):
    import shutil
    import subprocess

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.fail("chromium is missing: make deps installs the Debian chromium package")
    page = tmp_path / "report.html"
    page.write_text(report.to_html(matrix.build(_report_docs(), baseline="baseline"), source="/results"))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    rendered = dom.stdout
    # what the browser built from the page: SVG elements in the DOM, not just text in a file
    assert rendered.count("<svg") == 6 and rendered.count('class="errbar"') == 36
    assert re.search(r'<text class="point-label"[^>]*>c=4</text>', rendered)
    assert "Workload 128/1024" in rendered and "TP2/PP1" in rendered
    shot = tmp_path / "shot.png"
    r = subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1400,2400", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.stat().st_size > 20_000, r.stderr[-2000:]  # a drawn page, not blank

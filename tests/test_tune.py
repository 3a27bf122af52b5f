"""The tuner's pure parts with recorded figures: objective and guard parsing, the decision rule (threshold
max(5%, scatter), guard, confirmation, ties, memory), candidates against the flag set and the memory fit,
and the adaptive search reaching the grid's winner in fewer runs."""

from __future__ import annotations

import pytest

from sparkhelpers.errors import UsageError
from sparkhelpers.recipes.schema import resolve
from sparkhelpers.tune import candidates as cd
from sparkhelpers.tune import decide as dc
from sparkhelpers.tune import levers as lv
from sparkhelpers.tune import search as se
from sparkhelpers.tune.objective import parse_guard, parse_objective

BASE_DOC = {"recipe": 1, "name": "qwen3-small", "model": "Qwen/Qwen3-0.6B", "image": "vllm/vllm-openai:v0.19.0",
            "engine_args": {"max_num_seqs": 2, "max_model_len": 2048}}


def base():
    return resolve("test", dict(BASE_DOC), 1)


def m(values, guard=(), status=dc.OK, memory=None, name="x"):
    return dc.Measurement(name, objective=list(values), guard=list(guard), status=status, memory_gib=memory)


# ---- objective and guard ----------------------------------------------------------------------------

def test_objective_and_guard_parse_and_print_back():
    o = parse_objective("output_tps@c16:1024/128")
    assert (o.metric, o.point.concurrency, o.point.input_len, o.point.output_len) == ("output_tps", 16, 1024, 128)
    assert o.higher_is_better and o.text == "output_tps@c16:1024/128"
    g = parse_guard("tpot@c1<=+5%", o)
    assert g.relative and g.limit == pytest.approx(0.05) and g.point.input_len == 1024 and g.point.concurrency == 1
    assert g.text == "tpot@c1:1024/128<=+5%"
    a = parse_guard("ttft@c1:64/16<=800", o)
    assert not a.relative and a.limit == 800 and a.point.key == "c1:64/16"
    gp = parse_objective("goodput@c8:256/64[ttft<=500,tpot<=50]")
    assert gp.slo_ms == {"ttft": 500.0, "tpot": 50.0} and gp.text == "goodput@c8:256/64[tpot<=50,ttft<=500]"
    assert parse_guard("none", o) is None


@pytest.mark.parametrize("text, says", [
    ("output_tps", "METRIC@cN"), ("outptu_tps@c16", "did you mean output_tps"),
    ("goodput@c16", "needs its SLOs"), ("ttft@c1[ttft<=5]", "only apply to goodput"),
    ("output_tps@c0", "outside 1-4096"),
])
def test_bad_objectives_are_one_line_with_the_fix(text, says):
    with pytest.raises(UsageError) as err:
        parse_objective(text)
    assert says in f"{err.value.message} {err.value.fix}"


def test_guard_holds_relative_and_absolute():
    o = parse_objective("output_tps@c8")
    g = parse_guard("tpot@c1<=+5%", o)
    assert g.holds(20.0, 20.9)[0] and not g.holds(20.0, 21.1)[0]
    assert not g.holds(None, 20.0)[0]
    with pytest.raises(UsageError):
        parse_guard("tpot@c1<=+5", o)  # a signed limit must be a percentage


# ---- the decision rule ------------------------------------------------------------------------------

def test_win_needs_more_than_five_percent_and_more_than_the_scatter():
    o = parse_objective("output_tps@c8")
    inc = m([100, 100, 100])
    assert dc.decide(o, None, inc, m([104, 104, 104])).outcome == dc.TIE
    assert dc.decide(o, None, inc, m([106, 106, 106])).outcome == dc.WIN
    noisy = m([80, 120, 100])  # interquartile range 20% of the median: a 15% gain is inside it
    v = dc.decide(o, None, noisy, m([115, 115, 115]))
    assert v.outcome == dc.TIE and v.threshold == pytest.approx(0.2)
    assert dc.decide(o, None, noisy, m([125, 125, 125])).outcome == dc.WIN
    assert dc.scatter([98, 100, 102, 100, 300]) == pytest.approx(0.02)  # one wild repeat barely moves it
    assert dc.decide(o, None, inc, m([80, 80, 80])).outcome == dc.LOSS


def test_lower_is_better_metrics_and_the_guard():
    o = parse_objective("ttft@c1:512/16")
    inc, faster = m([100, 100, 100], guard=[100]), m([80, 80, 80], guard=[80])
    assert dc.decide(o, None, inc, faster).outcome == dc.WIN
    o2 = parse_objective("output_tps@c8")
    g = parse_guard("tpot@c1<=+5%", o2)
    assert dc.decide(o2, g, m([100] * 3, guard=[20] * 3), m([150] * 3, guard=[22] * 3)).outcome == dc.GUARD_FAILED
    assert dc.decide(o2, g, m([100] * 3, guard=[20] * 3), m([150] * 3, guard=[20.5] * 3)).outcome == dc.WIN


def test_a_tie_keeps_the_incumbent_unless_it_uses_clearly_less_memory():
    o = parse_objective("output_tps@c8")
    assert dc.decide(o, None, m([100] * 3, memory=40), m([101] * 3, memory=39)).outcome == dc.TIE
    assert dc.decide(o, None, m([100] * 3, memory=40), m([99] * 3, memory=30)).outcome == dc.WIN_MEMORY
    assert dc.decide(o, None, m([100] * 3), m([99] * 3, memory=30)).outcome == dc.TIE  # unknown memory


def test_crash_never_wins_and_confirmation_must_agree():
    o = parse_objective("output_tps@c8")
    inc = m([100] * 3)
    assert dc.decide(o, None, inc, m([], status=dc.CRASHED)).outcome == dc.FAILED
    assert dc.confirmed(o, None, inc, m([150] * 3), m([150] * 3)).outcome == dc.WIN
    v = dc.confirmed(o, None, inc, m([150] * 3), m([102] * 3))
    assert v.outcome == dc.TIE and "not confirmed" in v.reason


# ---- candidates -------------------------------------------------------------------------------------

def test_candidate_is_an_exact_recipe_checked_against_the_flag_set():
    point = parse_objective("output_tps@c8:64/16").point
    good = cd.build(base(), {"max_num_seqs": 8}, "rule", point)
    assert not good.refused and good.recipe.engine_args["max_num_seqs"] == 8
    assert good.recipe_id != cd.build(base(), {}, "control", point).recipe_id
    assert good.recipe_id == cd.build(base(), {"max_num_seqs": 8}, "rule", point).recipe_id  # same changes, same id
    bad = cd.build(base(), {"max_num_seqz": 8}, "oracle", point)
    assert bad.recipe is None and "has no flag --max-num-seqz" in bad.refused


def test_candidate_that_cannot_fit_is_refused_with_the_reason():
    doc = {**BASE_DOC, "engine_args": {"max_model_len": 32768, "gpu_memory_utilization": 0.85},
           "metadata": {"arch": {"params": 70e9, "weight_dtype": "fp8", "layers": 80, "kv_heads": 8,
                                 "head_dim": 128, "max_position_embeddings": 131072,
                                 "kv_dtype": "bf16", "attention": "dense"}}}
    big = resolve("test", doc, 1)
    point = parse_objective("output_tps@c64:4096/512").point
    assert cd.build(big, {"max_num_seqs": 8}, "rule", point).refused == ""  # 8 x 4608 tokens fit
    cand = cd.build(big, {"max_num_seqs": 64}, "rule", point)
    assert cand.refused.startswith("does not fit in memory") and cand.fit["fits"] is False
    assert "64 sequences of 4096+512 tokens need 294912 KV tokens" in cand.refused
    huge = resolve("test", {**doc, "metadata": {"arch": {**doc["metadata"]["arch"], "weight_dtype": "bf16"}}}, 1)
    assert cd.build(huge, {"max_num_seqs": 8}, "rule", point).refused.startswith("does not fit in memory")


def test_legal_values_schema_rejects_with_the_reason():
    schema = lv.legal_schema("vllm")
    assert lv.check_value(schema, "max_num_seqs", 16) == ""
    assert "outside 1-1024" in lv.check_value(schema, "max_num_seqs", 5000)
    assert "not a tunable lever" in lv.check_value(schema, "tensor_parallel_size", 2)
    assert "not one of" in lv.check_value(schema, "kv_cache_dtype", "int3")
    assert "not allowed" in lv.check_value(schema, "speculative_config", {"method": "ngram", "model": "x"})


# ---- the search with recorded figures ---------------------------------------------------------------

SEQS = {1: 50.0, 2: 100.0, 4: 190.0, 8: 262.0, 16: 258.0}
FACTORS = {("enable_prefix_caching", False): 0.99, ("kv_cache_dtype", "fp8"): 1.03,
           ("enable_chunked_prefill", False): 0.90, ("max_num_batched_tokens", 8192): 1.01,
           ("load_format", "fastsafetensors"): 1.0}


def recorded(cand, confirmation):
    """Throughput as a function of the changes (a crash for n-gram speculation), 2% scatter."""
    ch = cand.recipe.engine_args
    if "speculative_config" in ch:
        return dc.Measurement(cand.name, status=dc.CRASHED, message="engine exited during load")
    v = SEQS[ch.get("max_num_seqs", 2)]
    for (key, value), f in FACTORS.items():
        if ch.get(key) == value:
            v *= f
    tpot = 20.0 * (1.2 if ch.get("max_num_seqs") == 16 else 1.0)
    return dc.Measurement(cand.name, objective=[v * 0.99, v, v * 1.01], guard=[tpot] * 3)


def run_search(strategy, lever_list=None, budget=0):
    o = parse_objective("output_tps@c8:64/16")
    g = parse_guard("tpot@c1<=+5%", o)
    b = base()
    s = se.Search(o, g, recorded, lambda ch, origin: cd.build(b, ch, origin, o.point), budget=budget)
    control = cd.build(b, {}, "control", o.point)
    levers = lever_list or lv.vllm_levers(o.point)
    winner, wm = strategy(s, control, levers)
    return s, winner, wm


def test_adaptive_reaches_the_grid_winner_with_fewer_runs():
    small = [lv.Lever("max_num_seqs", "max_num_seqs", (4, 8, 16), ""),
             lv.Lever("prefix_caching", "enable_prefix_caching", (False,), ""),
             lv.Lever("kv_cache_dtype", "kv_cache_dtype", ("fp8",), ""),
             lv.Lever("ngram_spec", "speculative_config", (dict(lv.NGRAM),), "")]
    a, a_win, a_m = run_search(se.adaptive, small)
    g, g_win, g_m = run_search(se.grid, small)
    assert a_win.changes["max_num_seqs"] == 8 and g_win.changes["max_num_seqs"] == 8
    assert a_m.median >= g_m.median * (1 - dc.MIN_GAIN)  # within the decision threshold of the grid's
    assert a.runs < g.runs, (a.runs, g.runs)
    crashed = [e for e in a.trail if e.get("outcome") == dc.FAILED]
    assert len(crashed) == 1 and "crashed" in crashed[0]["reason"]


def test_adaptive_full_lever_set_confirms_and_never_reruns_a_crash():
    s, winner, wm = run_search(se.adaptive)
    assert winner.changes.get("max_num_seqs") == 8 and wm.confirmation
    assert [e["step"] for e in s.trail].count("confirmation") >= 1
    spec_runs = [m for c, m in s.measured if "speculative_config" in c.changes]
    assert len(spec_runs) == 1  # crashed once, never retried unchanged
    assert all(e.get("outcome") != dc.WIN or True for e in s.trail)


def test_no_better_candidate_keeps_the_incumbent():
    flat = [lv.Lever("prefix_caching", "enable_prefix_caching", (False,), ""),
            lv.Lever("max_num_batched_tokens", "max_num_batched_tokens", (8192,), "")]
    s, winner, _ = run_search(se.adaptive, flat)
    assert winner.name == "control" and s.runs == 3


def test_budget_caps_the_runs():
    s, winner, _ = run_search(se.grid, budget=4)
    assert s.runs == 4 and s.budget_spent and any(e["step"] == "budget" for e in s.trail)


def test_memory_in_use_comes_from_the_nodes_low_water_mark():
    from sparkhelpers.tune.runs import memory_gib

    doc = {"node_memory": {"available": True, "nodes": {
        "spark1": {"mem_total_gib": 121.7, "mem_available_min_gib": 60.2},
        "spark2": {"mem_total_gib": 121.7, "mem_available_min_gib": 70.0}}}}
    assert memory_gib([doc, {"node_memory": {"available": False, "nodes": {}}}]) == pytest.approx(61.5)
    assert memory_gib([{}]) is None


def test_a_failed_start_is_a_timeout_or_a_crash_by_its_first_line():
    from sparkhelpers.tune.runs import start_status

    assert start_status("the engine was not healthy after 240s (http://x/health):\ntail") == dc.START_TIMEOUT
    assert start_status("the start failed: engine exited (rc 1):\nEngineCore failed; timeout 5") == dc.CRASHED


def test_a_memory_win_must_clear_the_memory_scatter_too():
    o = parse_objective("output_tps@c8")
    inc = m([100] * 3, memory=40)
    noisy = m([99] * 3, memory=36)
    noisy.memory_scatter = 0.15  # the node's memory moved 15% between repeats (other processes)
    assert dc.decide(o, None, inc, noisy).outcome == dc.TIE
    noisy.memory_scatter = 0.02
    assert dc.decide(o, None, inc, noisy).outcome == dc.WIN_MEMORY

"""The job API the CLI and the gateway call, on real files: the same request gives the same id and returns
the stored job (no new run); another objective for that id is a conflict with the retune fix; a running job
makes a second tune busy; list/get/delete; the objective and guard are in the record before any run."""

from __future__ import annotations

import os

import pytest

from sparkhelpers.config import Config, Setting
from sparkhelpers.errors import UsageError
from sparkhelpers.tune import flow, jobs, store


def config(tmp_path) -> Config:
    values = {"SPARK_STATE_DIR": str(tmp_path / "state"), "VLLM_IMAGE": "vllm/vllm-openai:v0.19.0",
              "CLUSTER_NAME": "tunetest"}
    return Config({k: Setting(k, v, "flag") for k, v in values.items()}, [])


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text("recipe: 1\nname: qwen3-small\nmodel: Qwen/Qwen3-0.6B\nimage: vllm/vllm-openai:v0.19.0\n"
                    "engine_args: {max_num_seqs: 2, max_model_len: 2048}\n")
    return str(path)


def stored(cfg, req, state=store.DONE, pid=None):  # noqa: ANN001, ANN201
    plan = jobs.prepare(cfg, req)
    record = flow.new_record(plan, store.new_job_id(plan.tuned_id))
    record["state"] = state
    store.save(cfg, record)
    store.set_job(cfg, record["job_id"], id=plan.tuned_id, state=state, pid=pid)
    return record


def test_same_request_same_id_and_the_stored_job_is_returned(tmp_path, base):
    cfg = config(tmp_path)
    req = jobs.TuneRequest(base, "output_tps@c8:64/16", "tpot@c1<=+5%")
    assert jobs.tuned_id(cfg, req) == jobs.tuned_id(cfg, jobs.TuneRequest(base, "output_tps@c8:64/16"))
    record = stored(cfg, req)
    assert record["objective"]["text"] == "output_tps@c8:64/16" and record["guard"]["text"] == "tpot@c1:64/16<=+5%"
    again = jobs.submit(cfg, req, background=True)
    assert again["existing"] and again["id"] == record["id"] and again["job_id"] == record["job_id"]
    with pytest.raises(jobs.Conflict) as err:
        jobs.submit(cfg, jobs.TuneRequest(base, "ttft@c1:64/16", "none"))
    assert "tune retune" in err.value.fix
    rows = jobs.list_tuned(cfg)
    assert [r["id"] for r in rows] == [record["id"]] and rows[0]["objective"] == "output_tps@c8:64/16"
    assert jobs.get(cfg, record["id"])["job_id"] == record["job_id"]
    out = jobs.delete(cfg, record["id"])
    assert out == {"id": record["id"], "removed": True, "stopped": False}
    assert jobs.list_tuned(cfg) == [] and not (store.root(cfg) / "jobs" / f"{record['job_id']}.json").exists()
    with pytest.raises(store.NotFound):
        jobs.get(cfg, record["id"])


def test_a_running_job_makes_another_tune_busy_and_a_dead_one_failed(tmp_path, base):
    cfg = config(tmp_path)
    running = stored(cfg, jobs.TuneRequest(base, "output_tps@c8"), store.RUNNING, pid=os.getpid())
    other = tmp_path / "other.yaml"
    other.write_text("recipe: 1\nname: other\nmodel: Qwen/Qwen3-8B\nimage: vllm/vllm-openai:v0.19.0\n")
    with pytest.raises(jobs.Busy) as err:
        jobs.submit(cfg, jobs.TuneRequest(str(other), "output_tps@c8"))
    assert running["job_id"] in err.value.message
    with pytest.raises(jobs.Busy):
        jobs.delete(cfg, running["id"])
    store.set_job(cfg, running["job_id"], pid=2**22 + 12345)  # a pid that is not alive
    assert jobs.job(cfg, running["job_id"])["state"] == store.FAILED
    assert jobs.get(cfg, running["id"])["state"] == store.FAILED


def test_request_from_the_api_body_is_checked(base):
    req = jobs.TuneRequest.from_dict({"target": base, "levers": ["max_num_seqs=8"]})
    assert req.levers == ("max_num_seqs=8",) and "--lever" in req.cli_args()
    with pytest.raises(UsageError, match="unknown field"):
        jobs.TuneRequest.from_dict({"target": base, "objectiv": "x"})
    with pytest.raises(UsageError, match="needs a target"):
        jobs.TuneRequest.from_dict({})


def test_llama_cpp_has_its_own_levers_and_a_vllm_lever_is_refused(tmp_path):
    cfg = config(tmp_path)
    path = tmp_path / "gguf.yaml"
    path.write_text("recipe: 1\nname: small-gguf\nmodel: HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q8_0\n"
                    "runtime: llama-cpp\nimage: ghcr.io/ggml-org/llama.cpp:server\n")
    plan = jobs.prepare(cfg, jobs.TuneRequest(str(path), "output_tps@c4:64/16", "none"))
    assert [lv.key for lv in plan.levers][:2] == ["parallel", "batch_size"] and plan.skipped_levers == []
    with pytest.raises(UsageError, match="not a lever of this runtime"):
        jobs.prepare(cfg, jobs.TuneRequest(str(path), "output_tps@c4", "none", levers=("max_num_seqs",)))


def test_winner_lookup_by_id_or_by_the_name_it_was_tuned_for(tmp_path, base):
    cfg = config(tmp_path)
    record = stored(cfg, jobs.TuneRequest(base, "output_tps@c8"))
    with pytest.raises(store.NotFound):
        store.winner(cfg, record["id"])  # not finished: no winner yet
    record["winner"] = {"recipe_file": "/x/winner.yaml", "served_name": "Qwen/Qwen3-0.6B", "recipe_id": "r"}
    store.save(cfg, record)
    for name in (record["id"], "Qwen/Qwen3-0.6B", base):
        assert store.winner(cfg, name)["recipe_file"] == "/x/winner.yaml"
    with pytest.raises(store.NotFound):
        store.winner(cfg, "other/model")

"""The tuned-model API on a real gateway process (its own port, its key store), over real tune files:
401/403 without an admin key on every route, 400 for a bad body, 404 for an unknown id, the same POST twice
gives the stored id (no new job), another objective for that id is a 409 conflict with the re-tune fix, a
running tune makes every other tune 409 busy (the cluster is one), GET shows the winner, DELETE removes the
files. The full flow (a real job on the emulated cluster picking a winner, PUT without gain, the winner served
by the gateway, DELETE stopping it) is tests/test_tune_api_sim.py."""

from __future__ import annotations

import os

import pytest
import requests
from gatewaykit import Gateway

from sparkhelpers.config import Config, Setting
from sparkhelpers.tune import flow, jobs, store

BASE = ("recipe: 1\nname: qwen3-api\nmodel: Qwen/Qwen3-0.6B\nimage: vllm/vllm-openai:v0.19.0\n"
        "engine_args: {max_num_seqs: 1, max_model_len: 2048}\n")
OTHER = BASE.replace("qwen3-api", "qwen3-other").replace("Qwen3-0.6B", "Qwen3-8B")
OBJECTIVE = "output_tps@c8:64/16"
ROUTES = [("POST", "/models"), ("GET", "/models"), ("GET", "/models/x@vllm@0123456789ab"),
          ("PUT", "/models/x@vllm@0123456789ab"), ("DELETE", "/models/x@vllm@0123456789ab"), ("GET", "/jobs/t-1")]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    state = tmp_path_factory.mktemp("tune-api")
    (state / "base.yaml").write_text(BASE)
    (state / "other.yaml").write_text(OTHER)
    g = Gateway(state, {"idle": {"cmd": ["sleep", "600"], "health": "none", "placement": [["n1"]]}},
                nodes={"n1": "127.0.0.1"}).start()
    g.admin = g.create_key("tune-admin", "--admin")
    g.user = g.create_key("tune-user")
    g.cfg = Config({k: Setting(k, v, "flag") for k, v in {"SPARK_STATE_DIR": str(state),
                                                           "VLLM_IMAGE": "vllm/vllm-openai:v0.19.0"}.items()}, [])
    yield g
    g.stop()


def call(gw, method: str, path: str, key: str | None = "admin", **kw) -> requests.Response:  # noqa: ANN001
    headers = {} if key is None else {"Authorization": f"Bearer {getattr(gw, key)}"}
    return requests.request(method, gw.url + path, headers=headers, timeout=60, **kw)


def stored(gw, target: str, state: str = store.DONE, pid: int | None = None, objective: str = OBJECTIVE) -> dict:  # noqa: ANN001
    """A tune record as a finished (or running) job leaves it, written through tune's own store."""
    plan = jobs.prepare(gw.cfg, jobs.TuneRequest(target, objective))
    record = flow.new_record(plan, store.new_job_id(plan.tuned_id))
    record["state"] = state
    if state == store.DONE:
        record["winner"] = {"name": "max_num_seqs=8", "recipe_id": "qwen3-api@vllm@0123456789ab",
                            "changes": {"max_num_seqs": 8}, "kept_incumbent": False}
    store.save(gw.cfg, record)
    store.set_job(gw.cfg, record["job_id"], id=plan.tuned_id, state=state, pid=pid)
    return record


@pytest.mark.parametrize("method, path", ROUTES)
def test_every_route_needs_an_admin_key(gw, method, path):
    r = call(gw, method, path, key=None)
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    r = call(gw, method, path, key="user")
    assert r.status_code == 403 and "not an admin key" in r.json()["error"]["message"]


@pytest.mark.parametrize("body, says", [
    (None, "needs a JSON body"), (b"{nope", "not JSON"), (b"[1]", "JSON object"),
    (b'{"target": "x", "objectiv": "ttft@c1"}', "unknown field objectiv"), (b"{}", "needs a target"),
])
def test_a_bad_request_is_400_with_the_fix(gw, body, says):
    r = call(gw, "POST", "/models", data=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert says in err["message"] and err["fix"], err


def test_unknown_ids_are_404(gw):
    for method, path in ROUTES[2:]:
        r = call(gw, method, path)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"


def test_same_request_twice_gives_the_stored_id_and_get_shows_the_winner(gw):
    target = str(gw.state_dir / "base.yaml")
    record = stored(gw, target)
    answers = [call(gw, "POST", "/models", json={"target": target, "objective": OBJECTIVE}) for _ in range(2)]
    assert [a.status_code for a in answers] == [200, 200]
    for a in answers:
        doc = a.json()
        assert doc["existing"] and doc["id"] == record["id"] and doc["job_id"] == record["job_id"], doc
        assert doc["winner"]["changes"] == {"max_num_seqs": 8} and a.headers["Location"] == f"/models/{record['id']}"
    assert len(list((store.root(gw.cfg) / "jobs").glob("*.json"))) == 1  # no new job was made
    r = call(gw, "POST", "/models", json={"target": target, "objective": "ttft@c1:64/16", "guard": ""})
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict" and "retune" in r.json()["error"]["fix"]
    listing = call(gw, "GET", "/models").json()["data"]
    assert [m["id"] for m in listing] == [record["id"]] and listing[0]["objective"] == OBJECTIVE
    shown = call(gw, "GET", f"/models/{record['id']}").json()
    assert shown["winner"]["changes"] == {"max_num_seqs": 8} and shown["objective"]["text"] == OBJECTIVE
    assert call(gw, "GET", f"/jobs/{record['job_id']}").json()["state"] == store.DONE


def test_a_running_tune_makes_others_busy_and_delete_removes_the_files(gw):
    done = store.load(gw.cfg, jobs.tuned_id(gw.cfg, jobs.TuneRequest(str(gw.state_dir / "base.yaml"), OBJECTIVE)))
    running = stored(gw, str(gw.state_dir / "other.yaml"), store.RUNNING, pid=os.getpid())
    r = call(gw, "POST", "/models", json={"target": str(gw.state_dir / "base.yaml"), "objective": OBJECTIVE})
    assert r.status_code == 200  # the stored one: nothing runs, so the lock does not matter
    for method, path, body in (("PUT", f"/models/{done['id']}", {}), ("PUT", f"/models/{running['id']}", {}),
                               ("DELETE", f"/models/{running['id']}", None)):
        r = call(gw, method, path, json=body)
        assert r.status_code == 409 and r.json()["error"]["code"] == "busy", (method, path, r.text)
        assert running["job_id"] in r.json()["error"]["message"]
    assert call(gw, "PUT", f"/models/{done['id']}", json={"objectiv": 1}).status_code == 400
    store.set_job(gw.cfg, running["job_id"], state=store.FAILED, pid=None)
    r = call(gw, "DELETE", f"/models/{done['id']}")
    assert r.status_code == 200 and r.json() == {"id": done["id"], "removed": True, "stopped": False, "unloaded": []}
    assert not store.job_dir(gw.cfg, done["id"]).exists()
    assert call(gw, "GET", f"/models/{done['id']}").status_code == 404
    assert call(gw, "DELETE", f"/models/{running['id']}").status_code == 200
    assert call(gw, "GET", "/models").json()["data"] == []


def test_a_models_file_entry_tuned_is_served_with_the_winner_recipe(gw, tmp_path):
    import yaml

    (gw.state_dir / "third.yaml").write_text(BASE.replace("qwen3-api", "qwen3-third").replace("0.6B", "4B"))
    record = stored(gw, str(gw.state_dir / "third.yaml"))
    winner = store.job_dir(gw.cfg, record["id"]) / "winner.yaml"
    winner.write_text((gw.state_dir / "third.yaml").read_text().replace("max_num_seqs: 1", "max_num_seqs: 8"))
    record["winner"].update(recipe_file=str(winner), served_name="Qwen/Qwen3-4B")
    store.save(gw.cfg, record)
    models = tmp_path / "models.yaml"
    for name in ("Qwen/Qwen3-4B", record["id"]):  # by the model it was tuned for, or by its id
        models.write_text(yaml.safe_dump({"models": {"q": {"tuned": name, "placement": [["n1"]]}}}))
        out = gw.cli("gateway", "check", "--models", str(models))
        assert f"q: recipe {winner};" in out.stdout, out.stdout + out.stderr
    models.write_text(yaml.safe_dump({"models": {"q": {"tuned": "Qwen/Nope"}}}))
    out = gw.cli("gateway", "check", "--models", str(models), check=False)
    assert out.returncode == 2 and "models file models.q.tuned: no tuned winner for Qwen/Nope" in out.stderr
    assert "sparkhelpers tune run Qwen/Nope" in out.stderr
    models.write_text(yaml.safe_dump({"models": {"q": {"tuned": "x", "cmd": ["true"]}}}))
    out = gw.cli("gateway", "check", "--models", str(models), check=False)
    assert out.returncode == 2 and "exactly one of recipe, cmd or tuned" in out.stderr
    assert call(gw, "DELETE", f"/models/{record['id']}").json()["removed"] is True


def test_delete_unloads_the_gateway_models_that_serve_it():
    from sparkhelpers.gateway.models_file import parse
    from sparkhelpers.tune.api import served_entries

    cfg = parse({"models": {"a": {"tuned": "Qwen/Qwen3-0.6B"}, "b": {"tuned": "q@vllm@0123456789ab"},
                            "c": {"recipe": "/s/tuned/q@vllm@0123456789ab/winner.yaml"}, "d": {"recipe": "other"},
                            "e": {"tuned": "someone-else"}}})
    record = {"id": "q@vllm@0123456789ab", "request": {"target": "base.yaml"}, "base": {"model": "Qwen/Qwen3-0.6B"},
              "winner": {"recipe_file": "/s/tuned/q@vllm@0123456789ab/winner.yaml"}}
    assert served_entries(cfg, record) == ["a", "b", "c"]

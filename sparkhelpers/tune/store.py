"""The result store: SPARK_STATE_DIR/tuned/<id>/ holds job.json (the request, objective, guard, every
candidate's figures and the decision trail), winner.yaml, report.html, the candidates' recipe files, the
benchmark results (runs/) and tune.log; SPARK_STATE_DIR/tuned/jobs/<job_id>.json is each job's state.
Every file is written atomically (a temporary renamed over the target, never through a link)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from sparkhelpers.config import Config, state_dir
from sparkhelpers.errors import SparkError
from sparkhelpers.recipes.identity import ID_RE

SCHEMA = "sparkhelpers.tune.v1"
JOBS = "jobs"
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


class NotFound(SparkError):
    """No tuned model (or job) of that id."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def root(cfg: Config | None = None) -> Path:
    return state_dir(cfg) / "tuned"


def check_id(tuned_id: str) -> str:
    if not ID_RE.match(tuned_id):
        raise NotFound(f"{tuned_id!r} is not a tuned-model id (model@runtime@12hex)",
                       fix="sparkhelpers tune list shows the ids")
    return tuned_id


def job_dir(cfg: Config | None, tuned_id: str) -> Path:
    return root(cfg) / check_id(tuned_id)


def write_json(path: Path, data: dict) -> None:
    from sparkhelpers.bench.sweep import write_text_nofollow

    write_text_nofollow(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist", fix="sparkhelpers tune list shows what is stored") from None
    except (OSError, ValueError) as exc:
        raise SparkError(f"cannot read {path}: {exc}", fix=f"remove {path.parent} and tune again") from None
    if not isinstance(data, dict):
        raise SparkError(f"{path} is not a job record", fix=f"remove {path.parent} and tune again")
    return data


def load(cfg: Config | None, tuned_id: str) -> dict:
    path = job_dir(cfg, tuned_id) / "job.json"
    if not path.is_file():
        raise NotFound(f"no tuned model {tuned_id}", fix="sparkhelpers tune list shows the ids")
    return read_json(path)


def save(cfg: Config | None, record: dict) -> None:
    record["updated"] = now()
    write_json(job_dir(cfg, record["id"]) / "job.json", record)


def listing(cfg: Config | None) -> list[dict]:
    out = []
    base = root(cfg)
    for d in sorted(base.iterdir()) if base.is_dir() else []:
        if d.is_dir() and not d.is_symlink() and ID_RE.match(d.name) and (d / "job.json").is_file():
            try:
                out.append(read_json(d / "job.json"))
            except SparkError:
                continue
    return out


def remove(cfg: Config | None, tuned_id: str) -> bool:
    d = job_dir(cfg, tuned_id)
    if not d.exists():
        return False
    shutil.rmtree(d)
    for state in (root(cfg) / JOBS).glob("*.json") if (root(cfg) / JOBS).is_dir() else []:
        try:
            if json.loads(state.read_text()).get("id") == tuned_id:
                state.unlink()
        except (OSError, ValueError):
            continue
    return True


# ---- job states -------------------------------------------------------------------------------------

def job_path(cfg: Config | None, job_id: str) -> Path:
    if not job_id.replace("-", "").isalnum() or len(job_id) > 40:
        raise NotFound(f"{job_id!r} is not a job id", fix="the job id is what tune run / POST /models returned")
    return root(cfg) / JOBS / f"{job_id}.json"


def new_job_id(tuned_id: str) -> str:
    import hashlib

    return "t-" + hashlib.sha256(f"{tuned_id}|{time.time_ns()}|{os.getpid()}".encode()).hexdigest()[:12]


def set_job(cfg: Config | None, job_id: str, **fields) -> dict:
    path = job_path(cfg, job_id)
    try:
        data = read_json(path)
    except NotFound:
        data = {"job_id": job_id, "created": now()}
    data.update(fields, updated=now())
    write_json(path, data)
    return data


def get_job(cfg: Config | None, job_id: str) -> dict:
    data = read_json(job_path(cfg, job_id))
    if data.get("state") in (QUEUED, RUNNING) and data.get("pid") and not _alive(int(data["pid"])):
        data.update(state=FAILED, error=data.get("error") or "the tune process ended without finishing "
                                                               f"(see {data.get('log', 'its log')})")
    return data


def _alive(pid: int) -> bool:
    from sparkhelpers.locking import alive

    return alive(pid)


def active_jobs(cfg: Config | None) -> list[dict]:
    d = root(cfg) / JOBS
    out = []
    for path in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            data = get_job(cfg, path.stem)
        except SparkError:
            continue
        if data.get("state") in (QUEUED, RUNNING):
            out.append(data)
    return out


def winner(cfg: Config | None, name: str) -> dict:
    """{id, recipe_file, served_name, recipe_id} of the done tuned model ``name`` names: an id, else the one
    record whose request target, base model or winner's served name is ``name`` (what the gateway serves)."""
    if ID_RE.match(name):
        records = [load(cfg, name)]
    else:
        records = [r for r in listing(cfg) if name in (r.get("request", {}).get("target"),
                                                       r.get("base", {}).get("model"),
                                                       (r.get("winner") or {}).get("served_name"))]
    done = [r for r in records if (r.get("winner") or {}).get("recipe_file")]
    if not done:
        raise NotFound(f"no tuned winner for {name}", fix=f"sparkhelpers tune run {name} (or POST /models)")
    if len(done) > 1:
        raise SparkError(f"{name} names {len(done)} tuned models: {', '.join(r['id'] for r in done)}",
                         fix="name the tuned model by its id")
    w = done[0]["winner"]
    return {"id": done[0]["id"], "recipe_file": w["recipe_file"], "served_name": w.get("served_name", ""),
            "recipe_id": w.get("recipe_id", "")}

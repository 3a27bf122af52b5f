"""The gateway's models file: which models it serves, where each is placed and how it is started.

```yaml
listen: 127.0.0.1:4000        # host:port the gateway binds (default 127.0.0.1:4000)
cold_start_wait: 600          # s a request waits for a cold model before 503 + Retry-After
start_timeout: 1800           # s a start may take before it counts as failed
settle: 5                     # s at most to wait, after a stop, for free memory to stop rising (default 0)
nodes: {spark1: 10.0.0.1}     # optional: node name -> address of its API (default: the cluster's topology:
                              # head and each WORKER_HOST; else the name itself)
models:
  qwen3:
    recipe: qwen3-0.6b        # run with `sparkhelpers cluster run --recipe qwen3-0.6b --nodes NODES`
    placement: [[spark1], [spark2]]   # node sets, one replica each (default: [[local]])
    aliases: [default]
    ttl: 300                  # s idle before it is stopped (0 = never)
    preload: false            # start when the gateway starts, restart at once when it dies
    group: big                # members of one group never run at the same time
    cold_start_wait: 900      # this model's own wait limit (default: the file's)
    concurrency: 16           # requests in flight per replica before 429 (default 10)
  tiny:
    cmd: [llama-server, --port, "${PORT}"]   # or any command (llama-swap's cmd); ${PORT} ${MODEL_ID}
  qwen3-tuned:
    tuned: qwen3-0.6b         # the winner of `sparkhelpers tune run qwen3-0.6b` (or POST /models), by model or id
```

Parsing is pure and strict: an unknown key or a bad value is one error naming the path and the fix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sparkhelpers.errors import UsageError

DEFAULT_CONCURRENCY = 10  # llama-swap's concurrencyLimit default
DEFAULT_START_PORT = 5800  # llama-swap's startPort default
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$")
TOP_KEYS = {"listen", "cold_start_wait", "start_timeout", "settle", "stop_timeout", "nodes", "models",
            "start_port", "status_auth"}
MODEL_KEYS = {"recipe", "cmd", "tuned", "env", "placement", "aliases", "ttl", "preload", "group", "concurrency",
              "upstream_model", "health", "port", "description", "cold_start_wait"}


@dataclass(frozen=True)
class Replica:
    model: str
    index: int
    nodes: tuple[str, ...]
    port: int

    @property
    def id(self) -> str:
        return self.model if self.index == 0 else f"{self.model}#{self.index}"


@dataclass
class ModelEntry:
    name: str
    recipe: str = ""
    cmd: list[str] = field(default_factory=list)
    tuned: str = ""  # a tuned model (id or name): served with its winner's recipe (sparkhelpers.tune.store)
    env: dict[str, str] = field(default_factory=dict)
    placement: list[tuple[str, ...]] = field(default_factory=lambda: [("local",)])
    aliases: list[str] = field(default_factory=list)
    ttl: float = 0.0
    preload: bool = False
    group: str = ""
    concurrency: int = DEFAULT_CONCURRENCY
    upstream_model: str = ""
    health: str = "/health"
    port: int = 0
    description: str = ""
    cold_start_wait: float | None = None  # overrides the file's cold_start_wait
    replicas: list[Replica] = field(default_factory=list)


@dataclass
class GatewayConfig:
    models: dict[str, ModelEntry]
    listen_host: str = "127.0.0.1"
    listen_port: int = 4000
    cold_start_wait: float = 600.0
    start_timeout: float = 1800.0
    stop_timeout: float = 30.0
    settle: float = 0.0
    nodes: dict[str, str] = field(default_factory=dict)
    status_auth: str = "none"
    source: str = ""

    def resolve(self, name: str) -> ModelEntry | None:
        """A model by its name or one of its aliases."""
        if name in self.models:
            return self.models[name]
        for entry in self.models.values():
            if name in entry.aliases:
                return entry
        return None

    def address(self, node: str) -> str:
        if node in self.nodes:
            return self.nodes[node]
        return "127.0.0.1" if node in ("local", "localhost", "head") else node


def _fail(where: str, what: str, fix: str) -> UsageError:
    return UsageError(f"models file {where}: {what}", fix=fix)


def _number(value, where: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise _fail(where, f"{value!r} is not a number >= {minimum:g}", "write a plain number of seconds")
    return float(value)


def _placement(value, where: str) -> list[tuple[str, ...]]:
    if isinstance(value, str):
        value = [[value]]
    if not isinstance(value, list) or not value:
        raise _fail(where, "placement must be a list of node sets", "write e.g. placement: [[spark1], [spark2]]")
    sets = []
    for item in value:
        nodes = [item] if isinstance(item, str) else item
        if not isinstance(nodes, list) or not nodes or not all(isinstance(n, str) and n for n in nodes):
            raise _fail(where, f"{item!r} is not a node set", "a node set is a list of node names: [spark1, spark2]")
        sets.append(tuple(nodes))
    return sets


def _model(name: str, raw: dict, where: str) -> ModelEntry:
    if not isinstance(raw, dict):
        raise _fail(where, "must be a mapping", "give the model's recipe or cmd and its placement")
    unknown = sorted(set(raw) - MODEL_KEYS)
    if unknown:
        raise _fail(where, f"unknown key {unknown[0]!r}", f"use one of: {', '.join(sorted(MODEL_KEYS))}")
    recipe, cmd, tuned = raw.get("recipe", ""), raw.get("cmd", []), raw.get("tuned", "")
    if [bool(recipe), bool(cmd), bool(tuned)].count(True) != 1:
        raise _fail(where, "needs exactly one of recipe, cmd or tuned",
                    "name a recipe (recipe: NAME), a command (cmd: [...]) or a tuned model (tuned: MODEL)")
    if isinstance(cmd, str):
        import shlex

        cmd = shlex.split(cmd)
    env = raw.get("env", {}) or {}
    if not isinstance(env, dict):
        raise _fail(f"{where}.env", "must be a mapping", "write env: {NAME: value}")
    entry = ModelEntry(name=name, recipe=str(recipe), cmd=[str(c) for c in cmd], tuned=str(tuned),
                       env={str(k): str(v) for k, v in env.items()},
                       aliases=[str(a) for a in raw.get("aliases", []) or []],
                       ttl=_number(raw.get("ttl", 0), f"{where}.ttl"), preload=bool(raw.get("preload", False)),
                       group=str(raw.get("group", "") or ""),
                       concurrency=int(_number(raw.get("concurrency", DEFAULT_CONCURRENCY), f"{where}.concurrency",
                                               1)),
                       upstream_model=str(raw.get("upstream_model", "") or ""),
                       health=str(raw.get("health", "/health")), port=int(_number(raw.get("port", 0), f"{where}.port")),
                       description=str(raw.get("description", "") or ""))
    if "cold_start_wait" in raw:
        entry.cold_start_wait = _number(raw["cold_start_wait"], f"{where}.cold_start_wait")
    if "placement" in raw:
        entry.placement = _placement(raw["placement"], f"{where}.placement")
    if entry.port and len(entry.placement) > 1:
        raise _fail(f"{where}.port", "a fixed port allows one replica only",
                    "drop port: ports are assigned per replica")
    return entry


def parse(doc: object, source: str = "") -> GatewayConfig:
    """A GatewayConfig from the loaded YAML document; raises UsageError (exit 2) on the first problem."""
    if not isinstance(doc, dict):
        raise _fail(source or "<doc>", "must be a mapping with a models: key", "see sparkhelpers gateway --help")
    unknown = sorted(set(doc) - TOP_KEYS)
    if unknown:
        raise _fail(unknown[0], "unknown key", f"use one of: {', '.join(sorted(TOP_KEYS))}")
    raw_models = doc.get("models") or {}
    if not isinstance(raw_models, dict) or not raw_models:
        raise _fail("models", "no model listed", "add at least one model under models:")
    models = {}
    for name, raw in raw_models.items():
        name = str(name)
        if not NAME_RE.match(name):
            raise _fail(f"models.{name}", "bad model name", "use letters, digits and . _ : / @ -")
        models[name] = _model(name, raw, f"models.{name}")
    cfg = GatewayConfig(models=models, source=source)
    host, _, port = str(doc.get("listen", "127.0.0.1:4000")).rpartition(":")
    if not host or not port.isdigit():
        raise _fail("listen", f"{doc.get('listen')!r} is not host:port", "write e.g. listen: 127.0.0.1:4000")
    cfg.listen_host, cfg.listen_port = host.strip("[]"), int(port)
    cfg.cold_start_wait = _number(doc.get("cold_start_wait", 600), "cold_start_wait")
    cfg.start_timeout = _number(doc.get("start_timeout", 1800), "start_timeout", 1)
    cfg.stop_timeout = _number(doc.get("stop_timeout", 30), "stop_timeout", 1)
    cfg.settle = _number(doc.get("settle", 0), "settle")
    cfg.nodes = {str(k): str(v) for k, v in (doc.get("nodes") or {}).items()}
    cfg.status_auth = str(doc.get("status_auth", "none"))
    if cfg.status_auth not in ("none", "admin"):
        raise _fail("status_auth", f"{cfg.status_auth!r}", "use none (public /ui and /metrics) or admin")
    _check_names(cfg)
    _assign_ports(cfg, int(_number(doc.get("start_port", DEFAULT_START_PORT), "start_port", 1)))
    return cfg


def _check_names(cfg: GatewayConfig) -> None:
    seen: dict[str, str] = {}
    for entry in cfg.models.values():
        for name in (entry.name, *entry.aliases):
            if name in seen and seen[name] != entry.name:
                raise _fail(f"models.{entry.name}.aliases", f"{name!r} also names {seen[name]}",
                            "give every model and alias a unique name")
            seen[name] = entry.name


def _assign_ports(cfg: GatewayConfig, start_port: int) -> None:
    """Ports in file order from start_port (like llama-swap's ${PORT}); a model's fixed port wins."""
    used = {e.port for e in cfg.models.values() if e.port}
    port = start_port
    for entry in cfg.models.values():
        entry.replicas = []
        for i, nodes in enumerate(entry.placement):
            if entry.port:
                chosen = entry.port
            else:
                while port in used:
                    port += 1
                chosen, port = port, port + 1
            entry.replicas.append(Replica(entry.name, i, nodes, chosen))


def load(path: str | Path) -> GatewayConfig:
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read the models file {p}: {exc.strerror}",
                         fix="pass --models FILE or set GATEWAY_MODELS_FILE") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UsageError(f"models file {p} is not valid YAML: {exc}", fix="fix the YAML syntax") from None
    return parse(doc, str(p))

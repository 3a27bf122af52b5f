"""The engine image to the workers that lack it: ``docker save`` once on the head, the archive relayed
like a model (both twins, each worker forwarding), ``docker load`` on every worker, its image ID checked
against the head's. The old way, ``docker save | ssh worker docker load`` to every worker at once
(``fanout``), stays for comparison (perf/distribution.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sparkhelpers.errors import SparkError
from sparkhelpers.relay.engine import Payload, Target, distribute
from sparkhelpers.runner import Host, Runner, build_ssh_cmd, shell_join, shell_quote

STAGE = ".sparkhelpers-images"  # under the HF cache of each node (the big disk, not the root fs)
METHODS = ("relay", "fanout")


@dataclass(frozen=True)
class ImageNode:
    name: str
    host: Host  # management (docker load and inspect run here)
    lanes: tuple[Host, ...]  # fabric twin 1 (and twin 2) for the bytes
    cache: str  # its HF cache: the archive lands in CACHE/.sparkhelpers-images/


def archive_name(image_id: str) -> str:
    return image_id.replace("sha256:", "")[:64] + ".tar"


def save_script(image: str, path: str) -> str:
    """The head's archive, written under a temp name and renamed (a killed save leaves no valid-looking tar)."""
    q = shell_quote(path)
    return (f"set -e; mkdir -p \"$(dirname {q})\"; [ -s {q} ] && exit 0; "
            f"docker save -o {q}.tmp {shell_quote(image)}; mv {q}.tmp {q}")


def load_script(path: str, image: str) -> str:
    """Load the relayed archive, remove it, print the image ID docker now has."""
    q = shell_quote(path)
    return (f"set -e; docker load -i {q} >/dev/null; rm -f {q}; "
            f"docker image inspect --format '{{{{.Id}}}}' {shell_quote(image)}")


def fanout_script(image: str, node: ImageNode, multiplex: bool = True) -> str:
    """Run on the head; ``multiplex=False`` when the head is another machine (no control dir there)."""
    load = shell_join(build_ssh_cmd(node.lanes[0], ["docker", "load"], bulk=True, multiplex=multiplex))
    return f"set -o pipefail; docker save {shell_quote(image)} | {load}"


def distribute_image(runner: Runner, image: str, image_id: str, head: Host, head_cache: str,
                     nodes: list[ImageNode], *, method: str = "relay", stall_s: float = 60,
                     say: Callable[[str], None] = print, warn: Callable[[str], None] = print,
                     record: Callable[[str], None] = lambda _: None) -> dict[str, str]:
    """Put ``image`` (the head's ``image_id``) on every node; returns {name: why} for those that failed
    (the others have it, checked by ID). ``record`` receives each shell script run on the head."""
    if method == "fanout":
        return _fanout(runner, image, image_id, head, nodes, record)
    archive = f"{head_cache}/{STAGE}/{archive_name(image_id)}"
    script = save_script(image, archive)
    record(f"# [head] save the image once\n{script}\n")
    runner.on(head, script, timeout=3600).check(f"saving {image} on the head",
                                                 fix=f"check free disk space under {head_cache} on the head")
    size = _size(runner, head, archive)
    payload = Payload(f"{head_cache}/{STAGE}", ({"path": archive_name(image_id), "size": size},))
    targets = [Target(n.name, n.lanes, f"{n.cache}/{STAGE}", ask=n.host) for n in nodes]
    out = distribute(runner, head, payload, targets, stall_s=stall_s, say=say, warn=warn)
    failed = dict(out.failed)
    done = [n for n in nodes if n.name in out.done]

    def load(node: ImageNode) -> tuple[ImageNode, str]:
        script = load_script(f"{node.cache}/{STAGE}/{archive_name(image_id)}", image)
        record(f"# [{node.name}] load the relayed image\n{script}\n")
        r = runner.on(node.host, script, timeout=3600)
        got = r.stdout.strip().splitlines()[-1] if r.ok and r.stdout.strip() else ""
        if runner.dry_run or got == image_id:
            return node, ""
        return node, f"docker load failed: {r.last_line}" if not r.ok else f"has image {got[:19]} after loading"

    for node, why in runner.parallel(load, done):
        if why:
            failed[node.name] = why
    if not failed and not runner.dry_run:
        runner.on(head, f"rm -f {shell_quote(archive)}", timeout=60)  # kept while a node still needs it
    return failed


def _size(runner: Runner, head: Host, path: str) -> int:
    r = runner.on(head, ["stat", "-c", "%s", path], timeout=30, mutating=False)
    if r.dry_run:
        return 0
    if not r.ok or not r.stdout.strip().isdigit():
        raise SparkError(f"cannot read the size of {path} on the head: {r.last_line}", fix="start again")
    return int(r.stdout.strip())


def _fanout(runner: Runner, image: str, image_id: str, head: Host, nodes: list[ImageNode],
            record: Callable[[str], None]) -> dict[str, str]:
    def copy(node: ImageNode) -> tuple[str, str]:
        script = fanout_script(image, node, multiplex=head.is_local)
        record(f"# [head] copy image to {node.name}\n{script}\n")
        r = runner.on(head, script, timeout=3600)
        if not r.ok:
            return node.name, f"docker save | docker load failed: {r.last_line}"
        got = runner.on(node.host, ["docker", "image", "inspect", "--format", "{{.Id}}", image], timeout=60)
        return node.name, "" if runner.dry_run or got.stdout.strip() == image_id else \
            f"has image {got.stdout.strip()[:19] or 'none'} after loading"
    return {name: why for name, why in runner.parallel(copy, nodes) if why}

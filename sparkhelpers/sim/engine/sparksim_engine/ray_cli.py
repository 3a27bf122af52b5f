"""`ray` in the sim image (test infrastructure): the real Ray CLI (ray 2.49.2 from PyPI, at
/opt/sparksim/ray), with one stand-in: NVML.

Real Ray counts a node's GPUs through NVML, which cannot exist here, so on its own a node shows 0 GPUs.
The emulated GPU is what the sim's NVIDIA runtime hook gives a container started with ``--gpus``
(``NVIDIA_VISIBLE_DEVICES``); for such a container, ``ray start`` without ``--num-gpus`` declares one
GPU per device (a DGX Spark has one GB10) through ``RAY_OVERRIDE_RESOURCES``, the variable real Ray reads
for this. A container without ``--gpus`` still shows 0 GPUs, as on a real node. Everything else (the GCS,
raylets, ``ray status``, how long a dead node takes to leave) is the real Ray's.
"""

from __future__ import annotations

import json
import os
import sys

VERSION = "2.49.2"  # the Ray the image carries (sim/image.py RAY_VERSION)
GPUS_PER_DEVICE = 1


def emulated_gpus(env: dict[str, str]) -> int:
    """How many GPUs NVML would report in this container: the devices the runtime hook exposed."""
    devices = env.get("NVIDIA_VISIBLE_DEVICES", "").strip()
    if not devices or devices in ("void", "none"):
        return 0
    if devices == "all":
        return GPUS_PER_DEVICE
    return len([d for d in devices.split(",") if d.strip()])


def declares_gpus(argv: list[str]) -> bool:
    return any(a == "--num-gpus" or a.startswith("--num-gpus=") for a in argv)


def start_env(argv: list[str], env: dict[str, str]) -> dict[str, str]:
    """The environment for the real CLI: RAY_OVERRIDE_RESOURCES for `ray start` when nothing declares GPUs."""
    out = dict(env)
    gpus = emulated_gpus(env)
    if argv[:1] == ["start"] and gpus and not declares_gpus(argv) and "RAY_OVERRIDE_RESOURCES" not in env:
        out["RAY_OVERRIDE_RESOURCES"] = json.dumps({"GPU": gpus})
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    os.environ.update(start_env(argv, dict(os.environ)))
    try:
        from ray.scripts.scripts import main as ray_main
    except ImportError as exc:
        print(f"sparksim ray: the real Ray is missing from this image ({exc}); rebuild it: "
              "tools/real-ray.sh && sparkhelpers sim build --force", file=sys.stderr)
        return 127
    sys.argv = ["ray", *argv]
    return ray_main() or 0


if __name__ == "__main__":
    sys.exit(main())

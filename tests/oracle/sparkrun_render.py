"""Test oracle, run with sparkrun's own Python: print the serve argv sparkrun renders for a recipe file.

Usage: python sparkrun_render.py RECIPE.yaml NODES   ->  {"runtime": ..., "argv": [...]} on stdout
Runs offline (HOME with `registries: []`, HF_HUB_OFFLINE=1, telemetry off: the caller sets them).
"""

import json
import shlex
import sys

from sparkrun.core.bootstrap import get_runtime, init_sparkrun
from sparkrun.core.recipe import Recipe
from sparkrun.core.recipe_overrides import apply_recipe_override_layers, build_override_context


def main() -> int:
    path, nodes = sys.argv[1], int(sys.argv[2])
    init_sparkrun()
    recipe = Recipe.load(path, offline=True)
    runtime = get_runtime(recipe.runtime)
    # sparkrun matches `when: {nodes: N}` on tp x pp; ours spreads an unset TP over the nodes: ask for that TP
    cli = {"tensor_parallel": nodes} if nodes > 1 and not recipe.defaults.get("tensor_parallel") else {}
    ctx = build_override_context(recipe, cli, runtime=runtime)
    apply_recipe_override_layers(recipe, ctx)
    head = "10.0.0.1" if nodes > 1 else None
    command = runtime.generate_command(recipe, cli, nodes > 1, num_nodes=nodes, head_ip=head)
    print(json.dumps({"runtime": recipe.runtime, "argv": shlex.split(command)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

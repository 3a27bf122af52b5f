"""One or two examples for every command's ``--help``, in one table (a test parses every one of them).

``sparkhelpers.cli`` adds them as the command's epilog when the sub-app is loaded; a new command gets
its line here (tests/test_discoverability.py fails for a command without one).
"""

from __future__ import annotations

EXAMPLES: dict[str, tuple[str, ...]] = {
    "": ("sparkhelpers status", "sparkhelpers models fit qwen3-32b --nodes 2"),
    "config show": ("sparkhelpers config show", "sparkhelpers config show --json"),
    "config get": ("sparkhelpers config get VLLM_PORT",),
    "config set": ("sparkhelpers config set VLLM_PORT 8001",
                   "printf '%s' \"$TOKEN\" | sparkhelpers config set HF_TOKEN -"),
    "config unset": ("sparkhelpers config unset MAX_MODEL_LEN",),
    "config check": ("sparkhelpers config check",),
    "config shell": ("eval \"$(sparkhelpers config shell)\"",),
    "config paths": ("sparkhelpers config paths",),
    "discover": ("sparkhelpers discover", "sparkhelpers discover --host spark-02 --json"),
    "discover capture": ("sparkhelpers discover capture /tmp/spark1-facts",),
    "sim up": ("sparkhelpers sim up --nodes 2", "sparkhelpers sim up --nodes 3 --name lab --dry-run"),
    "sim status": ("sparkhelpers sim status", "sparkhelpers sim status --json"),
    "sim profile": ("SPARK_CONFIG=$(sparkhelpers sim profile) ./start_cluster.sh",),
    "sim down": ("sparkhelpers sim down", "sparkhelpers sim down --all"),
    "sim exec": ("sparkhelpers sim exec spark2 ip -br addr",),
    "sim fault": ("sparkhelpers sim fault spark2 link-down twin1", "sparkhelpers sim fault spark2 clear"),
    "sim seed-model": ("sparkhelpers sim seed-model spark2 HuggingFaceTB/SmolLM2-135M-Instruct",),
    "sim flags": ("sparkhelpers sim flags", "sparkhelpers sim flags --write --version 0.32.0"),
    "sim image build": ("sparkhelpers sim image build", "sparkhelpers sim image build --force"),
    "models list": ("sparkhelpers models list", "sparkhelpers models list --json"),
    "models show": ("sparkhelpers models show qwen3-8b", "sparkhelpers models show --field tensor_parallel"),
    "models fit": ("sparkhelpers models fit qwen3-32b --nodes 2", "sparkhelpers models fit Qwen/Qwen3-8B --json"),
    "models download": ("sparkhelpers models download qwen3-8b",),
    "models verify": ("sparkhelpers models verify qwen3-8b --node spark-02",),
    "models sync": ("sparkhelpers models sync qwen3-8b --dry-run", "sparkhelpers models sync --to spark-02"),
    "models smoke": ("sparkhelpers models smoke --timeout 600",),
    "doctor": ("sparkhelpers doctor", "sparkhelpers doctor --full"),
    "cluster start": ("sparkhelpers cluster start --dry-run", "sparkhelpers cluster start --recipe qwen3-8b --nodes 2"),
    "cluster run": ("sparkhelpers cluster run --recipe qwen3-8b --port 8001",
                    "sparkhelpers cluster run --recipe recipes/mine.yaml --nodes 2 --dry-run"),
    "cluster stop": ("sparkhelpers cluster stop", "sparkhelpers cluster stop --force"),
    "cluster switch": ("sparkhelpers cluster switch qwen3-8b", "sparkhelpers cluster switch --list"),
    "status": ("sparkhelpers status", "sparkhelpers status --json"),
    "logs": ("sparkhelpers logs --tail 100", "sparkhelpers logs --node spark-02 --follow"),
    "setup": ("sparkhelpers setup", "sparkhelpers setup --non-interactive --workers spark-02 --model qwen3-8b"),
    "chat": ("sparkhelpers chat 'What is a DGX Spark?'", "sparkhelpers chat --model qwen3-8b"),
    "bench run": ("sparkhelpers bench run --max-concurrency 16 --num-prompts 200 --save-result",
                  "sparkhelpers bench run --dataset-name prefix_repetition --input-len 512 --output-len 64"),
    "bench current": ("sparkhelpers bench current --quick", "sparkhelpers bench current -c 1,4,16 -n 64"),
    "bench ingest": ("sparkhelpers bench ingest vllm-result.json llama-benchy.json",),
    "bench matrix": ("sparkhelpers bench matrix results/ --format html -o report.html",
                     "sparkhelpers bench matrix --baseline baseline"),
    "bench sweep": ("sparkhelpers bench sweep --models qwen3-8b --variants baseline,tier1 --dry-run",
                    "sparkhelpers bench sweep --yes --resume",
                    "sparkhelpers bench sweep --dry-run --recipes qwen3-8b,recipes/qwen3-8b-fp8.yaml --profile smoke"),
    "recipe show": ("sparkhelpers recipe show qwen3-8b",),
    "recipe validate": ("sparkhelpers recipe validate recipes/my-model.yaml",),
    "recipe hash": ("sparkhelpers recipe hash qwen3-8b --nodes 2",),
    "recipe render": ("sparkhelpers recipe render qwen3-8b --nodes 2",),
    "recipe list": ("sparkhelpers recipe list", "sparkhelpers recipe list --json"),
    "recipe import": ("sparkhelpers recipe import sparkrun-recipe.yaml -o recipes/mine.yaml",),
    "recipe export": ("sparkhelpers recipe export qwen3-8b --to llama-swap",),
    "gateway run": ("sparkhelpers gateway run --dry-run",),
    "gateway check": ("sparkhelpers gateway check",),
    "gateway start": ("sparkhelpers gateway start",),
    "gateway stop": ("sparkhelpers gateway stop",),
    "gateway status": ("sparkhelpers gateway status --json",),
    "gateway unit": ("sparkhelpers gateway unit --user spark",),
    "gateway export": ("sparkhelpers gateway export --litellm -o litellm.yaml",
                       "sparkhelpers gateway export --llama-swap -o llama-swap.yaml"),
    "keys create": ("sparkhelpers keys create team-a --models qwen3-8b --rpm 60",),
    "keys list": ("sparkhelpers keys list",),
    "keys revoke": ("sparkhelpers keys revoke team-a",),
    "keys rotate": ("sparkhelpers keys rotate team-a",),
    "usage": ("sparkhelpers usage --since 2026-01-01 --by key",),
    "tune run": ("sparkhelpers tune run qwen3-8b --objective output_tps@c16:1024/128 --guard 'tpot@c1<=+5%'",
                 "sparkhelpers tune run recipes/mine.yaml --lever max_num_seqs=8,16 --dry-run"),
    "tune retune": ("sparkhelpers tune retune qwen3-8b@vllm@0123456789ab --lever kv_cache_dtype",),
    "tune list": ("sparkhelpers tune list", "sparkhelpers tune list --json"),
    "tune show": ("sparkhelpers tune show qwen3-8b@vllm@0123456789ab",),
    "tune delete": ("sparkhelpers tune delete qwen3-8b@vllm@0123456789ab",),
}


def epilog(path: str) -> str | None:
    """The --help epilog for a command path ("" = the root), kept as written (click's \\b)."""
    lines = EXAMPLES.get(path)
    if not lines:
        return None
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)

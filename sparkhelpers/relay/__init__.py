"""Relay distribution: the head sends once, each worker forwards what it receives (see ``plan``),
over both fabric twins when both answer. ``distribute`` moves a set of files; ``models.sync`` (model
snapshots) and ``cluster.lifecycle`` (the engine image) build on it."""

from sparkhelpers.relay.engine import Outcome, Payload, Target, distribute, run_agent

__all__ = ["Outcome", "Payload", "Target", "distribute", "run_agent"]

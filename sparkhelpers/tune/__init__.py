"""The tuner: find the best recipe for a model on this cluster, prove it, keep it (``sparkhelpers tune``).

An objective and a guard are declared before any run (objective.py); candidates are the base recipe with
first-tier levers changed, checked against the engine's flag set and the memory-fit estimate
(candidates.py, levers.py), or proposed by an oracle LLM and validated (oracle.py); each is started as a
recipe and measured with repeats (runs.py); the decision rule (decide.py) and the search (search.py) are
pure; results live under SPARK_STATE_DIR/tuned/<id>/ (store.py, report.py); jobs.py is the Python API
the gateway's tuned-model API calls.
"""

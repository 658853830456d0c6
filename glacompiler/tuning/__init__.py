"""Kernel configs: tuned tables, the user cache and the Optuna search that fills them.

Importing this package stays cheap (the op imports lookup on its hot path): optuna, sympy and the benchmark
load only when tuning runs."""
from .lookup import clear_lookup_caches, lookup_config
from .online import tune_for_shapes

__all__ = ["clear_lookup_caches", "lookup_config", "tune_for_shapes"]

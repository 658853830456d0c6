"""Tuning: the Optuna search over a kernel family's configs (study.py), its GPU objective (benchmark.py), runs
over many buckets (driver.py), `glacompiler autotune` and `configs show` (command.py), and the online tuning of
`glacompiler.backend(autotune=True)` (online.py). The tables it writes and their runtime lookup are
glacompiler.tables. Importing this package stays cheap: optuna, sympy and the benchmark load only when tuning
runs."""
from .online import tune_for_shapes

__all__ = ["tune_for_shapes"]

"""Kernel configs: tuned tables, the user cache and the Optuna search that fills them."""

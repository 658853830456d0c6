"""Tuned-config tables: one JSON file per GPU (table_file.py: format, schema, where the files live) and the
runtime lookup the op uses (lookup.py). `glacompiler autotune` (glacompiler.tuning) writes them."""
from .lookup import clear_lookup_caches, tuned_config

__all__ = ["clear_lookup_caches", "tuned_config"]

"""Runtime config lookup: the user cache, then the shipped table for this GPU, then None (the caller uses
the heuristic).

Entries of both files are merged, user entries replacing shipped ones for the same (spec, bucket); an exact
bucket wins, else the nearest bucket of the same spec in log2 space, with its split count rescaled to the new
batch. Everything runs on the host from parsed files kept in memory: no GPU sync, no tensor reads, so the
answer is the same during CUDA-graph capture and replay. After the first call for a given (spec, shape,
device) the answer is one dict lookup.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..codegen import templates_version
from ..config import MAX_SPLITS, KernelConfig
from ..spec import AttentionSpec
from ..validation import ProblemShape
from . import tables
from .tables import Bucket, TableEntry, TableFormatError

_UNSET = object()
# (spec, batch, capacity, query_len, device index) -> KernelConfig or None
_resolved: dict = {}
# Files already warned about (stale or unreadable), so that each warns once per process.
_warned_files: set = set()


class StaleTableWarning(UserWarning):
    """A table tuned for other kernel templates: its configs are ignored."""


class BadTableWarning(UserWarning):
    """A table file that cannot be read or fails the schema check: ignored."""


def _warn_once(path: Path, message: str, category: type) -> None:
    if str(path) not in _warned_files:
        _warned_files.add(str(path))
        warnings.warn(message, category, stacklevel=4)


def _read_usable_entries(path: Path) -> list:
    """Entries of one table file, or [] when it is missing, unreadable or stale (with one warning)."""
    if not path.is_file():
        return []
    try:
        table = tables.read_table(path)
    except (OSError, TableFormatError) as error:
        _warn_once(path, f"ignoring tuned-config table {path}: {error}", BadTableWarning)
        return []
    if not table.is_current:
        _warn_once(
            path,
            f"ignoring tuned-config table {path}: tuned for kernel templates {table.templates_version}, "
            f"current templates are {templates_version()}; re-run `glacompiler autotune` to refresh it",
            StaleTableWarning,
        )
        return []
    return table.sorted_entries()


def programs_per_split(spec: AttentionSpec, bucket: Bucket, config: KernelConfig) -> int:
    """Programs the kernel launches per KV split: sequences x KV heads x row blocks x output-dim parts."""
    rows = spec.group_size * bucket.query_len
    return bucket.batch * spec.num_kv_heads * -(-rows // config.block_m) * config.dv_split


def rescale_splits(spec: AttentionSpec, config: KernelConfig, tuned: Bucket, wanted: Bucket) -> KernelConfig:
    """A config tuned for a neighbouring bucket, with its split count scaled so that programs x splits (the
    parallelism the tuner picked) stays the same, and no split shorter than one key block."""
    tuned_programs = programs_per_split(spec, tuned, config)
    wanted_programs = programs_per_split(spec, wanted, config)
    splits = round(config.num_splits * tuned_programs / wanted_programs)
    longest_useful = max(1, wanted.capacity // config.block_n)
    splits = max(1, min(splits, longest_useful, MAX_SPLITS))
    return dataclasses.replace(config, num_splits=splits)


class ConfigIndex:
    """The usable entries for one GPU, indexed by spec key."""

    def __init__(self, entries: list):
        self._by_spec: dict = {}
        for entry in entries:  # later entries (the user cache) replace earlier ones (shipped)
            self._by_spec.setdefault(entry.spec.key(), {})[entry.bucket] = entry

    def __len__(self) -> int:
        return sum(len(buckets) for buckets in self._by_spec.values())

    def nearest_entry(self, spec: AttentionSpec, bucket: Bucket) -> Optional[TableEntry]:
        buckets = self._by_spec.get(spec.key())
        if not buckets:
            return None
        exact = buckets.get(bucket)
        if exact is not None:
            return exact
        # Ties go to the larger bucket (sorted order + strict <): its split count scales down, never up.
        best = None
        for candidate in sorted(buckets, reverse=True):
            distance = candidate.log_distance(bucket)
            if best is None or distance < best[0]:
                best = (distance, candidate)
        return buckets[best[1]]

    def find(self, spec: AttentionSpec, bucket: Bucket) -> Optional[KernelConfig]:
        entry = self.nearest_entry(spec, bucket)
        if entry is None:
            return None
        if entry.bucket == bucket:
            return entry.config
        return rescale_splits(spec, entry.config, entry.bucket, bucket)


@functools.lru_cache(maxsize=None)
def index_for_gpu(gpu_name: str) -> ConfigIndex:
    """Shipped entries, then user-cache entries over them (parsed once per GPU name)."""
    shipped = _read_usable_entries(tables.shipped_table_path(gpu_name))
    user = _read_usable_entries(tables.user_table_path(gpu_name))
    return ConfigIndex(shipped + user)


@functools.lru_cache(maxsize=None)
def device_name(device_index: int) -> str:
    return torch.cuda.get_device_name(device_index)


def find_config(spec: AttentionSpec, bucket: Bucket, gpu_name: str) -> Optional[KernelConfig]:
    return index_for_gpu(gpu_name).find(spec, bucket)


def lookup_config(spec: AttentionSpec, shape: ProblemShape, device: torch.device) -> Optional[KernelConfig]:
    """Tuned config for one call on a CUDA device, or None (no table entry for this spec: use the heuristic)."""
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (spec, shape.batch, shape.capacity, shape.query_len, index)
    config = _resolved.get(key, _UNSET)
    if config is _UNSET:
        config = find_config(spec, Bucket(shape.batch, shape.capacity, shape.query_len), device_name(index))
        _resolved[key] = config
    return config


def clear_lookup_caches() -> None:
    """Forget parsed tables and resolved configs (after a table was written, or in tests)."""
    _resolved.clear()
    index_for_gpu.cache_clear()
    device_name.cache_clear()

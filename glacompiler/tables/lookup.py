"""Runtime config lookup: the user cache, then the shipped table for this GPU, then None (the caller uses the
family's heuristic).

Entries of both files are merged, user entries replacing shipped ones for the same (family, spec, bucket); an
exact bucket wins, else the nearest bucket of the same spec in log2 space, with its split count rescaled by the
family to the new bucket. Everything runs on the host from parsed files kept in memory: no GPU sync, no tensor
reads, so the answer is the same during CUDA-graph capture and replay. After the first call for a given
(family, spec, shape, device) the answer is one dict lookup.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import warnings
from pathlib import Path
from typing import Optional

import torch

from ..kernels.common.device_limits import cuda_index
from ..kernels.family import KernelFamily
from ..spec import AttentionSpec, ProblemShape
from . import table_file
from .table_file import Bucket, TableEntry, TableFormatError

LOGGER = logging.getLogger("glacompiler")
_UNSET = object()
# (family name, spec, batch, capacity, query_len, page size, device index) -> config or None
_resolved: dict = {}
# Files already warned about (stale or unreadable), so that each warns once per process.
_warned_files: set = set()


class StaleTableWarning(UserWarning):
    """A table with entries tuned for kernels that have changed since: those entries are ignored."""


class BadTableWarning(UserWarning):
    """A table file that cannot be read or fails the schema check: ignored."""


def _warn_once(path: Path, message: str, category: type) -> None:
    if str(path) not in _warned_files:
        _warned_files.add(str(path))
        warnings.warn(message, category, stacklevel=5)


def _read_usable_entries(path: Path, shipped: bool = False) -> list:
    """Current entries of one table file, or [] when it is missing or unreadable (with one warning); entries of
    families whose kernels changed are left out (with one warning for the user's own tables, which
    `glacompiler autotune` refreshes; a shipped table's are logged: only a new release refreshes them)."""
    if not path.is_file():
        return []
    try:
        table = table_file.read_table(path)
    except (OSError, TableFormatError) as error:
        _warn_once(path, f"ignoring tuned-config table {path}: {error}", BadTableWarning)
        return []
    stale = table.stale_families
    if stale and shipped:
        LOGGER.info("the %s entries of the shipped table %s were tuned for kernels that have changed since: the "
                    "heuristic configs run instead (`glacompiler autotune` writes a current table)", ", ".join(stale), path)
    elif stale:
        _warn_once(
            path,
            f"ignoring the {', '.join(stale)} entries of tuned-config table {path}: they were tuned for kernels "
            "that have changed since; re-run `glacompiler autotune` to refresh them",
            StaleTableWarning,
        )
    return table.current_entries()


def _bucket(shape: ProblemShape) -> Bucket:
    return Bucket(shape.batch, shape.capacity, shape.query_len)


class ConfigIndex:
    """The usable entries for one GPU, indexed by family and spec key."""

    def __init__(self, entries: list):
        self._by_spec: dict = {}
        for entry in entries:  # later entries (the user cache) replace earlier ones (shipped)
            self._by_spec.setdefault((entry.family, entry.spec.key()), {})[entry.bucket] = entry
        # What lookups from this index can answer (compiled graphs that hold configs are keyed by it).
        described = "\n".join(repr((entry.family, entry.spec.key(), entry.bucket, entry.page_size, entry.config))
                               for entry in entries)
        self.digest = hashlib.sha256(described.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return sum(len(buckets) for buckets in self._by_spec.values())

    def nearest_entry(self, family: str, spec: AttentionSpec, bucket: Bucket) -> Optional[TableEntry]:
        buckets = self._by_spec.get((family, spec.key()))
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

    def find(self, family: KernelFamily, spec: AttentionSpec, shape: ProblemShape):
        bucket = _bucket(shape)
        entry = self.nearest_entry(family.name, spec, bucket)
        if entry is None:
            return None
        if entry.bucket == bucket:
            return entry.config
        tuned = ProblemShape(entry.bucket.batch, entry.bucket.query_len, entry.bucket.capacity, entry.page_size)
        return family.rescale_config(entry.config, spec, tuned, shape)


@functools.lru_cache(maxsize=None)
def index_for_gpu(gpu_name: str) -> ConfigIndex:
    """Shipped entries, then user-cache entries over them (parsed once per GPU name); none where the environment
    turns the tables off (GLACOMPILER_TUNED_CONFIGS=0: every call on its family's heuristic, to tell whether a
    table causes a difference, or to compare kernels without their tuning)."""
    if os.environ.get("GLACOMPILER_TUNED_CONFIGS", "1") == "0":
        LOGGER.info("GLACOMPILER_TUNED_CONFIGS=0: tuned-config tables are not read")
        return ConfigIndex([])
    shipped = _read_usable_entries(table_file.shipped_table_path(gpu_name), shipped=True)
    user = _read_usable_entries(table_file.user_table_path(gpu_name))
    return ConfigIndex(shipped + user)


@functools.lru_cache(maxsize=None)
def device_name(device_index: int) -> str:
    return torch.cuda.get_device_name(device_index)


def find_config(family: KernelFamily, spec: AttentionSpec, shape: ProblemShape, gpu_name: str):
    return index_for_gpu(gpu_name).find(family, spec, shape)


def tuned_config(family: KernelFamily, spec: AttentionSpec, shape: ProblemShape, device: torch.device):
    """The tuned config of a family for one call on a CUDA device, or None (no table entry for this spec: the
    caller uses the family's heuristic)."""
    if device.type != "cuda":
        return None
    index = cuda_index(device)
    key = (family.name, spec, shape.batch, shape.capacity, shape.query_len, shape.page_size, index)
    config = _resolved.get(key, _UNSET)
    if config is _UNSET:
        config = find_config(family, spec, shape, device_name(index))
        _resolved[key] = config
    return config


def clear_lookup_caches() -> None:
    """Forget parsed tables and resolved configs (after a table was written, or in tests)."""
    from ..op.prepared import clear_prepared_calls  # late: the op imports this module

    _resolved.clear()
    clear_prepared_calls()  # their configs came from the tables
    index_for_gpu.cache_clear()
    device_name.cache_clear()

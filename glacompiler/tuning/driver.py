"""Tune many (spec, bucket) jobs in one process under a total wall-clock budget, writing the table after every
bucket so that a run killed at its time limit keeps everything it finished."""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

import torch

from ..kernels import PORTABLE_FAMILY_NAME, family_for_spec, family_named
from ..kernels.common.device_limits import DeviceLimits
from ..kernels.family import Config, open_choices
from ..spec import AttentionSpec, ProblemShape
from ..tables.table_file import Bucket, ConfigTable, open_for_update, write_table
from .study import BucketResult, ConfigEvaluator, DeviceLost, TuningBudget, journal_storage, tune_bucket

# A bucket given less than this is not started: compiling the default alone can take that long.
MIN_BUCKET_SECONDS = 10.0
SEED_NEIGHBOURS = 3


@dataclasses.dataclass(frozen=True)
class TuningJob:
    spec: AttentionSpec
    shape: ProblemShape
    family: str = PORTABLE_FAMILY_NAME  # the kernel family tuned (the one the op runs these calls on)

    @property
    def bucket(self) -> Bucket:
        return Bucket(self.shape.batch, self.shape.capacity, self.shape.query_len)

    def label(self) -> str:
        return f"{self.family} {self.spec.key()} {self.bucket.label()}"


def jobs_for_bucket(spec: AttentionSpec, shape: ProblemShape, device: Optional[torch.device],
                    latent_rows_in_graph: Optional[int] = None) -> list:
    """The jobs of one (spec, bucket): the family the op runs that call on (on `device`; the portable kernels when no
    device is given), and the portable kernels too where that family's kernels cannot be launched by a compiled
    graph (the Hopper latent kernel) and the backend launches such calls on the portable kernels in graphs without
    CUDA graphs (compiler/rewrite/graph_launches.py: at most `latent_rows_in_graph` query rows a latent head,
    default the backend's, 0 never, and a bounded cache)."""
    from ..compiler.rewrite.graph_launches import LATENT_ROWS_IN_GRAPH, latent_in_graph_rule  # (the backend's rule)

    family = family_for_spec(spec, shape, device) if device is not None else None
    jobs = [TuningJob(spec, shape, family.name if family else PORTABLE_FAMILY_NAME)]
    rows = LATENT_ROWS_IN_GRAPH if latent_rows_in_graph is None else latent_rows_in_graph
    if family is not None and not family.launches_in_graph and latent_in_graph_rule(rows)(spec, shape):
        jobs.append(TuningJob(spec, shape, PORTABLE_FAMILY_NAME))
    return jobs


def plan_jobs(specs: Sequence[AttentionSpec], batches: Sequence[int], capacities: Sequence[int],
              query_lens: Sequence[int], page_size: int, device: Optional[torch.device] = None) -> list:
    """Query length outermost (Lq 1 first: plain decoding), then each (capacity, batch) for every spec in turn,
    so that a run cut short covers all specs evenly, and each spec's buckets are tuned next to their
    neighbours (whose best configs seed the next study). Each bucket's jobs: jobs_for_bucket."""
    jobs = []
    for query_len in query_lens:
        for capacity in capacities:
            for batch in batches:
                for spec in specs:
                    shape = ProblemShape(batch=batch, query_len=query_len, capacity=capacity,
                                         page_size=page_size if spec.paged else 0)
                    jobs += jobs_for_bucket(spec, shape, device)
    return jobs


@dataclasses.dataclass
class RunSummary:
    out_path: Path
    tuned: list = dataclasses.field(default_factory=list)  # BucketResult
    already_done: list = dataclasses.field(default_factory=list)  # TuningJob
    not_started: list = dataclasses.field(default_factory=list)  # TuningJob (out of time)
    failed: list = dataclasses.field(default_factory=list)  # (TuningJob, reason)
    notes: list = dataclasses.field(default_factory=list)


def neighbour_configs(table: ConfigTable, job: TuningJob, count: int = SEED_NEIGHBOURS) -> list:
    """Tuned configs of the same family and spec from the `count` nearest buckets (log space), to seed a study; the
    bucket's own entry first, where the table has one (a retune, or an entry with a choice left open): what it had
    competes with what the new study finds, timed the same way. An entry with open yes/no choices seeds each way."""
    same_spec = [entry for entry in table.entries.values()
                 if entry.family == job.family and entry.spec == job.spec]
    same_spec.sort(key=lambda entry: (entry.bucket.log_distance(job.bucket), entry.bucket))
    configs: list = []
    for entry in same_spec[:count]:
        configs.extend(config for config in _open_choice_settings(entry) if config not in configs)
    return configs


def _open_choice_settings(entry) -> list:
    """An entry's config with its open choices made as the family makes them (snap needs every choice), then with
    each open yes/no choice made the other way: an entry tuned before a choice existed competes both ways."""
    resolved = family_named(entry.family).resolved_config(entry.config, entry.spec)
    settings = [resolved]
    for name in open_choices(entry.config):
        value = getattr(resolved, name)
        if isinstance(value, bool):
            settings.append(dataclasses.replace(resolved, **{name: not value}))
    return settings


EvaluatorFactory = Callable[[TuningJob], ConfigEvaluator]


def run_tuning(
    jobs: Sequence[TuningJob],
    *,
    out_path: Path,
    limits: DeviceLimits,
    evaluator_factory: EvaluatorFactory,
    budget: TuningBudget,
    total_time_s: Optional[float] = None,
    storage_path: Optional[Path] = None,
    command: str = "",
    retune: bool = False,
    progress: Optional[TextIO] = sys.stdout,
    default_config_for: Optional[Callable[[TuningJob], Config]] = None,
) -> RunSummary:
    started = time.monotonic()
    out_path = Path(out_path)
    table, note = open_for_update(out_path, limits.name)
    summary = RunSummary(out_path)
    if note:
        summary.notes.append(note)
        _say(progress, note)
    storage = journal_storage(storage_path) if storage_path else None

    pending = []
    for job in jobs:
        entry = table.get(job.family, job.spec, job.bucket)
        if not retune and entry is not None and not open_choices(entry.config):
            summary.already_done.append(job)
        else:
            pending.append(job)
    if summary.already_done:
        _say(progress, f"{len(summary.already_done)} buckets already in {out_path}; {len(pending)} to tune")

    for position, job in enumerate(pending):
        bucket_time = budget.time_s
        if total_time_s is not None:
            remaining = total_time_s - (time.monotonic() - started)
            fair_share = remaining / (len(pending) - position)
            if remaining < MIN_BUCKET_SECONDS:
                summary.not_started.extend(pending[position:])
                break
            share = max(MIN_BUCKET_SECONDS, fair_share)
            bucket_time = share if bucket_time is None else min(bucket_time, share)
        _say(progress, f"[{position + 1}/{len(pending)}] {job.label()}"
                       + (f" (up to {bucket_time:.0f} s)" if bucket_time is not None else ""))
        try:
            evaluator = evaluator_factory(job)
        except Exception as error:
            summary.failed.append((job, f"inputs: {type(error).__name__}: {error}"))
            _say(progress, f"  skipped: {type(error).__name__}: {error}")
            continue
        try:
            result = tune_bucket(
                job.spec, job.shape, evaluator, limits,
                budget=dataclasses.replace(budget, time_s=bucket_time),
                storage=storage,
                default_config=default_config_for(job) if default_config_for else None,
                seed_configs=neighbour_configs(table, job),
                progress=progress,
                family=family_named(job.family),
            )
        except DeviceLost as error:
            summary.failed.append((job, str(error)))
            summary.not_started.extend(pending[position + 1:])
            _say(progress, f"  stopping: {error}")
            break
        finally:
            close = getattr(evaluator, "close", None)
            if close is not None:
                close()
        if result is None:
            summary.failed.append((job, "the default config failed"))
            _say(progress, "  no entry: the default config failed")
            continue
        table.add(result.to_entry())
        table.record_run(command)
        write_table(table, out_path)
        summary.tuned.append(result)
        _say(progress, _result_line(result))

    from ..tables.lookup import clear_lookup_caches

    clear_lookup_caches()  # this process's lookups see the new table from now on
    return summary


def _result_line(result: BucketResult) -> str:
    rejected = f", {len(result.rejected)} rejected by the output check" if result.rejected else ""
    return (f"  -> {result.tuned_us:.1f} us vs default {result.default_us:.1f} us (x{result.speedup:.2f}); "
            f"{result.evaluated} timed, {result.failed} failed, {result.resource_pruned} pruned by the resource "
            f"model, {result.slow_pruned} pruned as slow{rejected}")


def _say(stream: Optional[TextIO], text: str) -> None:
    if stream is not None:
        print(text, file=stream, flush=True)

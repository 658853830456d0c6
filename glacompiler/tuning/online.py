"""Online tuning: what `glacompiler.backend(autotune=True)` calls at first compile, with the sites' real shapes.
A small budget per bucket; results go to the user cache, where the op's table lookup finds them from then on."""
from __future__ import annotations

import sys
from typing import Iterable, Optional, TextIO

import torch

from ..spec import AttentionSpec, ProblemShape

ONLINE_TRIALS = 12
ONLINE_TIME_S = 120.0


def tune_for_shapes(
    specs_and_shapes: Iterable[tuple[AttentionSpec, ProblemShape]],
    *,
    trials: int = ONLINE_TRIALS,
    time_budget_s: Optional[float] = ONLINE_TIME_S,
    device: Optional[torch.device] = None,
    retune: bool = False,
    progress: Optional[TextIO] = sys.stderr,
    latent_rows_in_graph: Optional[int] = None,
):
    """Tune each distinct (spec, shape bucket) on this GPU unless the user cache already has it, within
    time_budget_s seconds in all, and store the results in the user cache
    ($GLACOMPILER_CACHE_DIR/configs/<GPU>.json). Returns the driver's RunSummary. Each bucket is tuned for the
    family the op runs it on, and for the portable kernels too where a compiled graph launches it on them
    (driver.jobs_for_bucket; latent_rows_in_graph: the backend's, default that of a compile without CUDA graphs).

    Needs a CUDA device and optuna (`pip install glacompiler[tune]`)."""
    if not torch.cuda.is_available():
        raise RuntimeError("online tuning needs a CUDA GPU; none is visible to torch")
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise ImportError("online tuning needs optuna: pip install 'glacompiler[tune]'") from None
    from ..kernels.common.device_limits import DeviceLimits
    from ..tables.table_file import user_table_path
    from .benchmark import KernelBenchmark
    from .driver import jobs_for_bucket, run_tuning
    from .study import TuningBudget

    device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    limits = DeviceLimits.for_device(device)
    jobs = []
    tuned = set()  # (family, spec, bucket): sites of one bucket are tuned once
    for spec, shape in specs_and_shapes:
        for job in jobs_for_bucket(spec, shape, device, latent_rows_in_graph):
            if (job.family, job.spec, job.bucket) not in tuned:
                tuned.add((job.family, job.spec, job.bucket))
                jobs.append(job)
    out_path = user_table_path(limits.name)
    return run_tuning(
        jobs,
        out_path=out_path,
        limits=limits,
        evaluator_factory=lambda job: KernelBenchmark(job.spec, job.shape, device, limits),
        budget=TuningBudget(trials=trials),
        total_time_s=time_budget_s,
        storage_path=out_path.with_suffix(".journal"),
        command="online tuning (glacompiler.tuning.tune_for_shapes)",
        retune=retune,
        progress=progress,
    )

"""Online tuning: what `glacompiler.backend(autotune=True)` calls at first compile, with the sites' real shapes.
A small budget per bucket; results go to the user cache, where the op's table lookup finds them from then on."""
from __future__ import annotations

import sys
from typing import Iterable, Optional, TextIO

import torch

from ..kernels import PORTABLE_FAMILY_NAME, family_for_spec
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
):
    """Tune each distinct (spec, shape bucket) on this GPU unless the user cache already has it, within
    time_budget_s seconds in all, and store the results in the user cache
    ($GLACOMPILER_CACHE_DIR/configs/<GPU>.json). Returns the driver's RunSummary.

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
    from .driver import TuningJob, run_tuning
    from .study import TuningBudget

    device = torch.device(device) if device is not None else torch.device("cuda", torch.cuda.current_device())
    limits = DeviceLimits.for_device(device)
    jobs = []
    for spec, shape in specs_and_shapes:
        family = family_for_spec(spec, shape, device)
        job = TuningJob(spec, shape, family.name if family else PORTABLE_FAMILY_NAME)
        if all(job.bucket != other.bucket or job.spec != other.spec for other in jobs):
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

"""The GPU objective of a study: time the generated kernels for one (spec, bucket) with a given config, and
check a config's output against the default config's.

Timing: CUDA-graph replay of consecutive calls (triton.testing.do_bench_cudagraph, median per call), as a decode
step's attention calls follow one another, and as `benchmarks/bench_decode.py --grid` times the op; host-side launch
overhead is not timed. Inputs are random and, when one set is smaller than twice the L2, the calls rotate over
several sets so that no call finds its cache in L2. (Timing one call alone after an L2 clear, as the tuner did
before, ranked configs apart from the grid: on an H200 it put GTA B32 S4K Lq 2 at 2 splits, 1.07x slower back to
back than 3, and 64 to 128 splits equal at B1 S64K where 96 is 7% ahead; benchmarks/RESULTS.md.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import itertools
import logging
from typing import Any, Callable, Optional

import torch

from ..kernels.common.device_limits import DeviceLimits
from ..op import attention_with_kvcache_config
from ..problems import make_decode_problem, max_error, rounding_atol, timing_inputs
from ..spec import AttentionSpec, ProblemShape, cache_bytes

Config = Any  # any kernel family's config

MAX_INPUT_SETS = 16
# The correctness check runs on a problem this long at most (its float32 reference expands K/V per head).
CHECK_CAPACITY = 2048
CHECK_BATCH = 2
# do_bench_cudagraph's rep in ms: a short first look (for pruning) and the measurement that is recorded. It replays
# a graph of rep's worth of calls ten times and takes the median.
QUICK_REP_MS = 4
FULL_REP_MS = 20
TIMING_METHOD = "back-to-back"  # in each study's name: a journal of another timing's trials is not resumed

Timer = Callable[[Callable[[], None], bool], float]  # (fn, quick) -> median milliseconds per call


def back_to_back_timer(fn: Callable[[], None], quick: bool) -> float:
    import triton.testing

    # The graph records hundreds of Python op calls: a garbage collection among them could finalize an earlier
    # config's compiled kernel, whose module unload is illegal during a capture (newer Triton unloads freed kernels;
    # 3.9's do_bench_cudagraph keeps the collector off itself, versions between may not).
    collecting = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=QUICK_REP_MS if quick else FULL_REP_MS, return_mode="median")
    finally:
        if collecting:
            gc.enable()


def input_sets_needed(spec: AttentionSpec, shape: ProblemShape, l2_bytes: int) -> int:
    return max(1, min(MAX_INPUT_SETS, -(-2 * l2_bytes // max(1, cache_bytes(spec, shape)))))


class _CompiledResourceRecorder(logging.Handler):
    """Picks up what the portable launcher (kernels/portable/launch.py) logs at DEBUG after a launch (spec key, config, registers, spills, shared bytes),
    so each trial can store what the compiler really used next to the resource model's estimate."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.by_config: dict = {}

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and dataclasses.is_dataclass(args[1]):
            registers, spills, shared = args[2:]
            self.by_config[args[1]] = {"registers": registers, "spill_bytes": spills, "shared_bytes": shared}


@contextlib.contextmanager
def _recording(recorder: _CompiledResourceRecorder):
    logger = logging.getLogger("glacompiler")
    previous = logger.level
    logger.addHandler(recorder)
    logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        logger.removeHandler(recorder)
        logger.setLevel(previous)


class KernelBenchmark:
    """ConfigEvaluator for one (spec, bucket) on one device. Call close() (or use `with`) to free the inputs."""

    def __init__(self, spec: AttentionSpec, shape: ProblemShape, device: torch.device, limits: DeviceLimits, *,
                 timer: Optional[Timer] = None, seed: int = 0,
                 check_capacity: int = CHECK_CAPACITY):
        self.spec, self.shape, self.device = spec, shape, torch.device(device)
        self.timer = timer or back_to_back_timer
        self.timing = TIMING_METHOD if timer is None else ""  # (an injected timer names no method)
        self.check_capacity = check_capacity
        self.seed = seed
        sets = input_sets_needed(spec, shape, limits.l2_bytes)
        needed = sets * cache_bytes(spec, shape)
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            if needed > 0.8 * free:
                raise MemoryError(f"inputs need {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
        self.inputs = timing_inputs(spec, shape, self.device, sets, seed)
        self._runner_config: Optional[Config] = None
        self._runner: Optional[Callable[[], None]] = None
        self._check_problem = None
        self._compiled = _CompiledResourceRecorder()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._runner = self._runner_config = self._check_problem = None
        self.inputs = []
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _calls(self, config: Config) -> list:
        return [functools.partial(attention_with_kvcache_config, **kwargs, config=config) for kwargs in self.inputs]

    def _make_runner(self, config: Config) -> Callable[[], None]:
        """The calls in rotation over the input sets; the timer captures them in a graph."""
        calls = self._calls(config)
        with _recording(self._compiled):
            calls[0]()  # compiles, and raises OutOfResources and friends outside any graph capture
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        cycle = itertools.cycle(calls)
        return lambda: next(cycle)()

    def time_us(self, config: Config, quick: bool) -> float:
        # (on the tuned device, current or not: the timer captures the calls on the current device's stream)
        with torch.cuda.device(self.device) if self.device.type == "cuda" else contextlib.nullcontext():
            if config != self._runner_config:
                self._runner = self._make_runner(config)
                self._runner_config = config
            return 1000.0 * self.timer(self._runner, quick)

    def compiled_resources(self, config: Config) -> Optional[dict]:
        """Registers, spilled bytes and shared memory of the compiled kernel, once the config has run."""
        return self._compiled.by_config.get(config)

    def output_mismatch(self, config: Config, reference: Config) -> Optional[str]:
        """FlashAttention's rule on a short problem with NaN past each length: config's error against a float32
        reference may be at most 2x the reference config's error plus the dtype's rounding atol."""
        if self._check_problem is None:
            capacity = min(self.shape.capacity, self.check_capacity)
            if self.shape.page_size:
                capacity = max(self.shape.page_size, capacity // self.shape.page_size * self.shape.page_size)
            batch = min(self.shape.batch, CHECK_BATCH)
            # Uneven lengths: partial key blocks, splits of different lengths, one sequence full.
            lengths = [max(self.shape.query_len, capacity - 37 * (i + 1)) for i in range(batch - 1)] + [capacity]
            problem = make_decode_problem(
                self.spec, batch, self.shape.query_len, capacity, dtype=self.spec.torch_dtype,
                device=self.device, page_size=self.shape.page_size, seqlens=lengths,
                generator=torch.Generator().manual_seed(self.seed + 1),
            )
            expected_out, expected_lse = problem.reference(torch.float32)
            self._check_problem = (problem, expected_out, expected_lse)
        problem, expected_out, expected_lse = self._check_problem
        reference_out, reference_lse = attention_with_kvcache_config(**problem.kwargs, config=reference)
        out, lse = attention_with_kvcache_config(**problem.kwargs, config=config)
        if torch.isnan(out).any() or torch.isnan(lse).any():
            return "NaN in the output"
        atol = rounding_atol(expected_out, self.spec.torch_dtype)
        error, reference_error = max_error(out, expected_out), max_error(reference_out, expected_out)
        if error > 2 * reference_error + atol:
            return f"output error {error:.3g} > 2 x default's {reference_error:.3g} + atol {atol:.3g}"
        lse_atol = max(atol, 1e-5 if self.spec.dtype == "float32" else 1e-3)
        lse_error, reference_lse_error = max_error(lse, expected_lse), max_error(reference_lse, expected_lse)
        if lse_error > 2 * reference_lse_error + lse_atol:
            return f"lse error {lse_error:.3g} > 2 x default's {reference_lse_error:.3g} + atol {lse_atol:.3g}"
        return None

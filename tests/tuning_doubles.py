"""Shared doubles of the tuner's tests (not a test file): the paper's specs, device limits, a synthetic kernel
with a known cost surface, and table builders."""
from __future__ import annotations

import math

from glacompiler import cli
from glacompiler.kernels.common.device_limits import FALLBACK_LIMITS, DeviceLimits
from glacompiler.kernels.portable.config import PortableConfig
from glacompiler.kernels.portable.resource_model import estimate_resources
from glacompiler.kernels.portable.search_space import build_search_space
from glacompiler.presets import PAPER_SPECS
from glacompiler.spec import ProblemShape
from glacompiler.tables.table_file import ConfigTable, TableEntry

GPU = "NVIDIA H100 80GB HBM3"
H100 = DeviceLimits(GPU, **FALLBACK_LIMITS["H100"])
GQA = PAPER_SPECS["gqa"]
SHAPE = ProblemShape(batch=4, query_len=1, capacity=8192, page_size=64)
# A small shared-memory limit, so that part of the space (GQA key tiles of 128 keys with two pipeline buffers)
# cannot launch.
SMALL_GPU = DeviceLimits("Synthetic GPU", shared_bytes_per_block=100 * 1024, registers_per_block=65536,
                         max_registers_per_thread=255, l2_bytes=50 * 2**20, multiprocessors=132)
OPTIMUM = dict(block_n=64, block_d=64, num_splits=6, num_warps=4, num_stages=5, preload_q=True, dv_split=1)


class SyntheticKernel:
    """A known cost surface over the config knobs (minimum at OPTIMUM), a region that fails to 'compile'
    (5 stages with 8 warps), and a guard that the resource model pruned everything it should have."""

    def __init__(self, spec=GQA, limits=SMALL_GPU, mismatching=(), stop_after=None):
        self.spec, self.limits = spec, limits
        self.mismatching = set(mismatching)
        self.stop_after = stop_after
        self.calls = []  # (config, quick)
        self.checked = []

    @staticmethod
    def cost(config: PortableConfig) -> float:
        value = 100.0
        for name in ("block_n", "block_d", "num_splits", "num_warps", "dv_split"):
            value *= 1 + 0.15 * abs(math.log2(getattr(config, name) / OPTIMUM[name]))
        value *= 1 + 0.08 * abs(config.num_stages - OPTIMUM["num_stages"])
        value *= 1.0 if config.preload_q == OPTIMUM["preload_q"] else 1.1
        # A unique optimum: the separate combine (fused ties would let the search's order pick the winner).
        return value * (1.05 if config.fused_combine else 1.0)

    @staticmethod
    def fails(config: PortableConfig) -> bool:
        return config.num_stages == 5 and config.num_warps == 8

    def time_us(self, config: PortableConfig, quick: bool) -> float:
        assert estimate_resources(self.spec, config).fits(self.limits), f"evaluated a pruned config {config}"
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt  # the run is killed mid-study
        self.calls.append((config, quick))
        if self.fails(config):
            raise RuntimeError("OutOfResources: out of resource: shared memory (synthetic)")
        return self.cost(config) * (1.03 if quick else 1.0)

    def output_mismatch(self, config: PortableConfig, reference: PortableConfig):
        self.checked.append(config)
        return "output error 1.0 > 2 x default's 0.01 + atol 0.001" if config in self.mismatching else None


def true_optimum(spec=GQA, shape=SHAPE, limits=SMALL_GPU) -> PortableConfig:
    space = build_search_space(spec, shape, limits.multiprocessors)
    feasible = (c for c in space.configs(PortableConfig())
                if estimate_resources(spec, c).fits(limits) and not SyntheticKernel.fails(c))
    return min(feasible, key=SyntheticKernel.cost)


def entry(spec, bucket, config, tuned_us=80.0, default_us=100.0, page_size=64, family="portable") -> TableEntry:
    default = PortableConfig() if family == "portable" else type(config)()
    return TableEntry(family=family, spec=spec, bucket=bucket, page_size=page_size, config=config, tuned_us=tuned_us,
                      default_config=default, default_us=default_us, trials=10)


def make_table(entries, gpu=GPU, versions=None) -> ConfigTable:
    """A table of these entries, tuned for the current kernels (or for `versions`: {family: version})."""
    table = ConfigTable.new(gpu)
    for item in entries:
        table.add(item)
    table.kernel_versions.update(versions or {})
    table.record_run("glacompiler autotune --preset gqa")
    return table


def run_cli(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err

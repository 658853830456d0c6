"""The tuner (space, resource model, Optuna study, driver), the config tables and their lookup, and the
`glacompiler autotune` / `configs show` command. CPU only: the studies run on a synthetic cost surface, and the
GPU objective (KernelBenchmark) runs the kernels under the Triton interpreter with a wall-clock timer."""
from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest
import torch

optuna = pytest.importorskip("optuna")

from glacompiler.codegen import templates_version  # noqa: E402
from glacompiler.config import KernelConfig, heuristic_config  # noqa: E402
from glacompiler import cli  # noqa: E402
from glacompiler.tuning import command, lookup, tables  # noqa: E402
from glacompiler.tuning.driver import plan_jobs, run_tuning  # noqa: E402
from glacompiler.tuning.lookup import StaleTableWarning, clear_lookup_caches, find_config, lookup_config  # noqa: E402
from glacompiler.tuning.presets import PRESETS, Dims, spec_from_dims  # noqa: E402
from glacompiler.tuning.resources import FALLBACK_LIMITS, DeviceLimits, estimate_resources  # noqa: E402
from glacompiler.tuning.space import build_search_space  # noqa: E402
from glacompiler.tuning.study import TuningBudget, journal_storage, tune_bucket  # noqa: E402
from glacompiler.tuning.tables import (  # noqa: E402
    Bucket, ConfigTable, TableEntry, TableFormatError, read_table, write_table,
)
from glacompiler.validation import ProblemShape  # noqa: E402

GPU = "NVIDIA H100 80GB HBM3"
H100 = DeviceLimits(GPU, **FALLBACK_LIMITS["H100"])
PRESET_SPECS = {name: spec_from_dims(dims) for name, dims in PRESETS.items()}
GQA = PRESET_SPECS["gqa"]
SHAPE = ProblemShape(batch=4, query_len=1, capacity=8192, page_size=64)
# A small shared-memory limit, so that part of the space (GQA key tiles of 128 keys, or 64 x 128) cannot launch.
SMALL_GPU = DeviceLimits("Synthetic GPU", shared_bytes_per_block=20 * 1024, registers_per_block=65536,
                         max_registers_per_thread=255, l2_bytes=50 * 2**20, multiprocessors=132)
OPTIMUM = dict(block_n=64, block_d=64, num_splits=6, num_warps=8, num_stages=3, preload_q=True, dv_split=1)


class SyntheticKernel:
    """A known cost surface over the config knobs (minimum at OPTIMUM), a region that fails to 'compile'
    (3 stages with 4 warps), and a guard that the resource model pruned everything it should have."""

    def __init__(self, spec=GQA, limits=SMALL_GPU, mismatching=(), stop_after=None):
        self.spec, self.limits = spec, limits
        self.mismatching = set(mismatching)
        self.stop_after = stop_after
        self.calls = []  # (config, quick)
        self.checked = []

    @staticmethod
    def cost(config: KernelConfig) -> float:
        value = 100.0
        for name in ("block_n", "block_d", "num_splits", "num_warps", "dv_split"):
            value *= 1 + 0.15 * abs(math.log2(getattr(config, name) / OPTIMUM[name]))
        value *= 1 + 0.08 * abs(config.num_stages - OPTIMUM["num_stages"])
        return value * (1.0 if config.preload_q == OPTIMUM["preload_q"] else 1.1)

    @staticmethod
    def fails(config: KernelConfig) -> bool:
        return config.num_stages == 3 and config.num_warps == 4

    def time_us(self, config: KernelConfig, quick: bool) -> float:
        assert estimate_resources(self.spec, config).fits(self.limits), f"evaluated a pruned config {config}"
        if self.stop_after is not None and len(self.calls) >= self.stop_after:
            raise KeyboardInterrupt  # the run is killed mid-study
        self.calls.append((config, quick))
        if self.fails(config):
            raise RuntimeError("OutOfResources: out of resource: shared memory (synthetic)")
        return self.cost(config) * (1.03 if quick else 1.0)

    def output_mismatch(self, config: KernelConfig, reference: KernelConfig):
        self.checked.append(config)
        return "output error 1.0 > 2 x default's 0.01 + atol 0.001" if config in self.mismatching else None


def true_optimum(spec=GQA, shape=SHAPE, limits=SMALL_GPU) -> KernelConfig:
    space = build_search_space(spec, shape, limits.multiprocessors)
    feasible = (c for c in space.configs(KernelConfig())
                if estimate_resources(spec, c).fits(limits) and not SyntheticKernel.fails(c))
    return min(feasible, key=SyntheticKernel.cost)


# ----------------------------------------------------------------------------------------------- space
@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("batch,capacity,query_len", [(1, 1024, 1), (128, 32768, 4), (8, 8192, 2)])
def test_space_holds_only_valid_configs(name, batch, capacity, query_len):
    spec = PRESET_SPECS[name]
    shape = ProblemShape(batch=batch, query_len=query_len, capacity=capacity, page_size=64)
    default = heuristic_config(spec, batch, capacity, query_len, H100.multiprocessors)
    space = build_search_space(spec, shape, H100.multiprocessors, include=[default])
    assert space.contains(default)
    rows = spec.group_size * query_len
    assert min(space.values("block_m")) >= 16
    assert max(space.values("block_m")) <= max(16, default.block_m, 1 << (rows - 1).bit_length())
    assert max(space.values("num_splits")) <= 64
    assert max(space.values("block_n")) <= capacity
    for value in space.values("dv_split"):
        assert value == 1 or spec.head_dim_v // value >= 32
    # Every combination is a config the kernel accepts (KernelConfig validates its fields).
    for config in space.configs(default):
        assert isinstance(config, KernelConfig)


def test_space_scales_splits_with_parallelism():
    small = build_search_space(GQA, ProblemShape(1, 1, 32768, 64), 132)
    large = build_search_space(GQA, ProblemShape(128, 1, 32768, 64), 132)
    short = build_search_space(GQA, ProblemShape(1, 1, 128, 64), 132)
    assert max(small.values("num_splits")) >= 32  # 8 programs on 132 SMs: splits are the parallelism
    assert max(large.values("num_splits")) <= 2  # 1024 programs already fill the GPU
    assert max(short.values("num_splits")) <= 2  # 128 keys: no split shorter than 64 keys


# -------------------------------------------------------------------------------------- resource model
# Shared memory that Triton 3.9 allocated for these configs, compiled for sm_90 (compiled.metadata.shared).
TRITON_SHARED_BYTES = [
    ("gqa", dict(block_m=16, block_n=128, block_d=128), 40960),
    ("gqa", dict(block_m=16, block_n=64, block_d=64), 14336),
    ("gqa", dict(block_m=16, block_n=16, block_d=32), 5632),
    ("gta", dict(block_m=16, block_n=128, block_d=64), 36864),
    ("gla2", dict(block_m=64, block_n=128, block_d=64), 122880),
    ("gla2", dict(block_m=16, block_n=64, block_d=64), 51200),
    ("mla", dict(block_m=64, block_n=128, block_d=64), 221184),
    ("mla", dict(block_m=128, block_n=128, block_d=64), 294912),
]


@pytest.mark.parametrize("name,knobs,measured", TRITON_SHARED_BYTES)
def test_shared_memory_model_matches_triton(name, knobs, measured):
    estimate = estimate_resources(PRESET_SPECS[name], KernelConfig(num_warps=8, **knobs))
    assert estimate.shared_bytes == measured


def test_resource_model_prunes_what_cannot_launch():
    mla = PRESET_SPECS["mla"]
    too_much_shared = estimate_resources(mla, KernelConfig(block_m=128, block_n=128, num_warps=8))
    assert too_much_shared.excess(H100)["shared"] > 0  # 288 KiB > 227 KiB
    # A 128 x 512 fp32 accumulator is 512 registers per thread over 4 warps: twice the file, before anything
    # else (Triton spills 3 KB per thread there). Over 8 warps it spills ~0.7 KB, which is tolerated.
    too_many_registers = estimate_resources(mla, KernelConfig(block_m=128, block_n=16, num_warps=4))
    assert too_many_registers.excess(H100)["registers"] > 0
    assert not too_many_registers.fits(H100)
    assert estimate_resources(mla, KernelConfig(block_m=128, block_n=16, num_warps=8)).fits(H100)
    # Splitting the output dims over 4 programs shrinks the accumulator to fit in 4 warps.
    split = estimate_resources(mla, KernelConfig(block_m=128, block_n=16, num_warps=4, dv_split=4))
    assert split.excess(H100)["registers"] <= 0
    assert "KiB" in too_much_shared.describe(H100)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_heuristic_defaults_fit_hopper(name):
    spec = PRESET_SPECS[name]
    for batch, capacity, query_len in [(1, 1024, 1), (128, 32768, 4), (32, 8192, 2)]:
        config = heuristic_config(spec, batch, capacity, query_len, H100.multiprocessors)
        assert estimate_resources(spec, config).fits(H100), (name, config)


# ----------------------------------------------------------------------------------------------- study
def test_tuner_finds_the_optimum_and_prunes_and_records_failures():
    kernel = SyntheticKernel()
    result = tune_bucket(GQA, SHAPE, kernel, SMALL_GPU, budget=TuningBudget(trials=60), seed=0)
    assert result.config == true_optimum()
    assert result.tuned_us == pytest.approx(SyntheticKernel.cost(result.config))
    # The heuristic default was timed first, and is the baseline of the speed-up.
    default = heuristic_config(GQA, SHAPE.batch, SHAPE.capacity, SHAPE.query_len, SMALL_GPU.multiprocessors)
    assert kernel.calls[0][0] == default
    assert result.default_us == pytest.approx(SyntheticKernel.cost(default))
    assert result.speedup > 1
    # Within budget: the trial budget plus the split refinement (a few extra, no recompiling).
    assert result.evaluated <= 60 + 12
    # Configs the model rejects never reached the evaluator (SyntheticKernel asserts it) but were sampled.
    assert result.resource_pruned > 0
    # Failures are failed trials with the reason recorded, and the study went on past them.
    assert result.failed > 0
    assert result.slow_pruned > 0
    # Trials pruned as slow got the short first look only.
    assert sum(quick for _, quick in kernel.calls) > sum(not quick for _, quick in kernel.calls)


def test_failed_and_pruned_trials_are_recorded_in_storage(tmp_path):
    storage = journal_storage(tmp_path / "journal.log")
    result = tune_bucket(GQA, SHAPE, SyntheticKernel(), SMALL_GPU, budget=TuningBudget(trials=40), storage=storage)
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert failed and all("OutOfResources" in t.user_attrs["error"] for t in failed)
    assert all(t.params["num_stages"] == 3 and t.params["num_warps"] == 4 for t in failed)
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert any(t.user_attrs.get("pruned", "").startswith("resources: shared") for t in pruned)
    assert any(t.user_attrs.get("pruned", "").startswith("slow") for t in pruned)
    # Every timed trial keeps the model's estimate, to compare with what the compiler used.
    timed = [t for t in study.get_trials() if t.user_attrs.get("evaluated")]
    assert timed and all(t.user_attrs["model"]["shared_bytes"] <= SMALL_GPU.shared_bytes_per_block for t in timed)


def test_interrupted_study_resumes_from_the_journal(tmp_path):
    path = tmp_path / "journal.log"
    first = SyntheticKernel(stop_after=30)  # about half of the budget's timings, then the run dies
    with pytest.raises(KeyboardInterrupt):
        tune_bucket(GQA, SHAPE, first, SMALL_GPU, budget=TuningBudget(trials=30), storage=journal_storage(path))
    timed_before = {c for c, _ in first.calls}

    second = SyntheticKernel()
    result = tune_bucket(GQA, SHAPE, second, SMALL_GPU, budget=TuningBudget(trials=30),
                         storage=journal_storage(path))  # a new storage and study object on the same file
    default = heuristic_config(GQA, SHAPE.batch, SHAPE.capacity, SHAPE.query_len, SMALL_GPU.multiprocessors)
    # Not searched again (the default is timed once more only to confirm the winner's speed-up).
    assert default in timed_before and all(c != default for c, quick in second.calls if quick)
    assert 0 < len({c for c, _ in second.calls}) < 30  # continued with what the budget had left
    assert result.evaluated >= 30
    assert result.default_us == pytest.approx(SyntheticKernel.cost(default))


def test_mismatching_output_is_dropped_with_the_reason():
    optimum = true_optimum()
    kernel = SyntheticKernel(mismatching=[optimum])
    result = tune_bucket(GQA, SHAPE, kernel, SMALL_GPU, budget=TuningBudget(trials=60), seed=0)
    assert optimum in kernel.checked
    assert result.config != optimum
    assert result.rejected and result.rejected[0]["config"] == optimum.to_dict()
    assert "output error" in result.rejected[0]["reason"]
    assert result.tuned_us >= SyntheticKernel.cost(optimum)


def test_winner_is_timed_again_against_the_default():
    optimum = true_optimum()

    class FastOnlyOnce(SyntheticKernel):
        """The optimum looks fast in the search, but not when timed again next to the default."""

        def time_us(self, config, quick):
            value = super().time_us(config, quick)
            if config == optimum and sum(c == optimum and not q for c, q in self.calls) > 1:
                return 1000.0
            return value

    kernel = FastOnlyOnce()
    result = tune_bucket(GQA, SHAPE, kernel, SMALL_GPU, budget=TuningBudget(trials=60), seed=0)
    default = heuristic_config(GQA, SHAPE.batch, SHAPE.capacity, SHAPE.query_len, SMALL_GPU.multiprocessors)
    assert result.config == default and result.tuned_us == result.default_us
    assert kernel.calls[-4:] == [(default, False), (optimum, False), (default, False), (optimum, False)]


def test_no_result_when_the_default_fails():
    default = heuristic_config(GQA, SHAPE.batch, SHAPE.capacity, SHAPE.query_len, SMALL_GPU.multiprocessors)

    class DefaultBreaks(SyntheticKernel):
        def time_us(self, config, quick):
            if config == default:
                raise RuntimeError("CompilationError: synthetic")
            return super().time_us(config, quick)

    assert tune_bucket(GQA, SHAPE, DefaultBreaks(), SMALL_GPU, budget=TuningBudget(trials=5)) is None


def test_wall_clock_budget_stops_the_study():
    kernel = SyntheticKernel()
    result = tune_bucket(GQA, SHAPE, kernel, SMALL_GPU, budget=TuningBudget(trials=500, time_s=0.5))
    assert result is not None and result.evaluated < 500


# ---------------------------------------------------------------------------------------------- tables
def entry(spec, bucket, config, tuned_us=80.0, default_us=100.0, page_size=64) -> TableEntry:
    return TableEntry(spec=spec, bucket=bucket, page_size=page_size, config=config, tuned_us=tuned_us,
                      default_config=KernelConfig(), default_us=default_us, trials=10)


def make_table(entries, gpu=GPU, version=None) -> ConfigTable:
    table = ConfigTable.new(gpu)
    if version is not None:
        table.templates_version = version
    for item in entries:
        table.add(item)
    table.record_run("glacompiler autotune --preset gqa")
    return table


def test_table_round_trip_and_file_name(tmp_path):
    table = make_table([entry(GQA, Bucket(8, 8192, 1), KernelConfig(block_n=64, num_splits=4))])
    path = tmp_path / tables.gpu_file_name(GPU)
    assert path.name == "NVIDIA_H100_80GB_HBM3.json"
    write_table(table, path)
    loaded = read_table(path)
    assert loaded.gpu == GPU and loaded.templates_version == templates_version() and loaded.is_current
    assert loaded.commands == ["glacompiler autotune --preset gqa"]
    assert loaded.torch_version and loaded.triton_version and loaded.date
    assert loaded.get(GQA, Bucket(8, 8192, 1)).config == KernelConfig(block_n=64, num_splits=4)
    assert loaded.get(GQA, Bucket(8, 8192, 1)).speedup == pytest.approx(1.25)


def _valid_table_json() -> dict:
    return make_table([entry(GQA, Bucket(8, 8192, 1), KernelConfig())]).to_json()


@pytest.mark.parametrize("corrupt,message", [
    (lambda d: d.pop("gpu"), "missing key 'gpu'"),
    (lambda d: d.update(format=2), "not one of"),
    (lambda d: d.update(extra=1), "unexpected key 'extra'"),
    (lambda d: d["entries"][0].update(tuned_us=-1.0), "greater than 0"),
    (lambda d: d["entries"][0].update(tuned_us="fast"), "expected number"),
    (lambda d: d["entries"][0]["config"].update(block_m=True), "expected integer"),
    (lambda d: d["entries"][0]["config"].pop("num_warps"), "missing key 'num_warps'"),
    (lambda d: d["entries"][0]["bucket"].update(batch=0), "below the minimum"),
    (lambda d: d["entries"][0]["config"].update(block_m=48), "power of two"),
    (lambda d: d["entries"][0]["spec"].update(kind="linear"), "kind must be one of"),
])
def test_table_schema_rejects_malformed_files(tmp_path, corrupt, message):
    data = _valid_table_json()
    ConfigTable.from_json(data)  # the untouched table is valid
    corrupt(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(TableFormatError, match=message):
        read_table(path)


def test_table_that_is_not_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    with pytest.raises(TableFormatError, match="not valid JSON"):
        read_table(path)


def test_tuning_into_a_stale_or_foreign_file(tmp_path):
    path = tmp_path / "t.json"
    write_table(make_table([entry(GQA, Bucket(8, 8192, 1), KernelConfig())], version="0" * 16), path)
    table, note = tables.open_for_update(path, GPU)
    assert not table.entries and "replaced" in note
    with pytest.raises(TableFormatError, match="not for this GPU"):
        tables.open_for_update(path, "NVIDIA H200")


# ---------------------------------------------------------------------------------------------- lookup
@pytest.fixture
def table_dirs(tmp_path, monkeypatch):
    user_root, shipped = tmp_path / "cache", tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setenv("GLACOMPILER_CACHE_DIR", str(user_root))
    monkeypatch.setattr(tables, "shipped_tables_dir", lambda: shipped)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: GPU)
    monkeypatch.setattr(lookup, "_warned_files", set())
    clear_lookup_caches()
    yield user_root / "configs", shipped
    clear_lookup_caches()


CUDA0 = torch.device("cuda", 0)


def shape_of(batch, capacity, query_len=1) -> ProblemShape:
    return ProblemShape(batch=batch, query_len=query_len, capacity=capacity, page_size=64)


def test_lookup_order_user_cache_then_shipped_then_none(table_dirs):
    user_dir, shipped_dir = table_dirs
    bucket = Bucket(8, 8192, 1)
    shipped_config, user_config = KernelConfig(block_n=16, num_splits=2), KernelConfig(block_n=64, num_splits=3)
    assert lookup_config(GQA, shape_of(8, 8192), CUDA0) is None  # no tables: the caller uses the heuristic

    write_table(make_table([entry(GQA, bucket, shipped_config)]), shipped_dir / tables.gpu_file_name(GPU))
    clear_lookup_caches()
    assert lookup_config(GQA, shape_of(8, 8192), CUDA0) == shipped_config

    write_table(make_table([entry(GQA, bucket, user_config)]), user_dir / tables.gpu_file_name(GPU))
    clear_lookup_caches()
    assert lookup_config(GQA, shape_of(8, 8192), CUDA0) == user_config
    # Another spec has no entry in either table; CPU tensors never use tables.
    assert lookup_config(PRESET_SPECS["mla"], shape_of(8, 8192), CUDA0) is None
    assert lookup_config(GQA, shape_of(8, 8192), torch.device("cpu")) is None
    # Another GPU's table is not used.
    assert find_config(GQA, bucket, "NVIDIA H200") is None


def test_lookup_is_a_dict_hit_after_the_first_call(table_dirs, monkeypatch):
    _, shipped_dir = table_dirs
    config = KernelConfig(block_n=64, num_splits=3)
    write_table(make_table([entry(GQA, Bucket(8, 8192, 1), config)]), shipped_dir / tables.gpu_file_name(GPU))
    assert lookup_config(GQA, shape_of(8, 8192), CUDA0) == config
    assert lookup_config(GQA, shape_of(9, 8192), CUDA0) is not None  # parsed tables stay in memory

    def no_reading(*args, **kwargs):
        raise AssertionError("the hot path read a file")

    monkeypatch.setattr(tables, "read_table", no_reading)
    monkeypatch.setattr(torch.cuda, "get_device_name", no_reading)
    assert lookup_config(GQA, shape_of(8, 8192), CUDA0) == config
    assert (GQA, 8, 8192, 1, 0) in lookup._resolved


def test_nearest_bucket_in_log_space(table_dirs):
    _, shipped_dir = table_dirs
    small, large = KernelConfig(block_n=16, num_splits=16), KernelConfig(block_n=64, num_splits=1)
    long_lq = KernelConfig(block_n=32, num_splits=2)
    write_table(make_table([
        entry(GQA, Bucket(8, 8192, 1), small),
        entry(GQA, Bucket(128, 8192, 1), large),
        entry(GQA, Bucket(8, 8192, 4), long_lq),
    ]), shipped_dir / tables.gpu_file_name(GPU))

    assert find_config(GQA, Bucket(8, 8192, 1), GPU) == small  # exact
    near_small = find_config(GQA, Bucket(16, 16384, 1), GPU)  # log2 distance sqrt(2) vs sqrt(10)
    assert dataclasses.replace(near_small, num_splits=16) == small
    assert near_small.num_splits == 8  # twice the sequences: half the splits keep the tuned parallelism
    near_large = find_config(GQA, Bucket(64, 4096, 1), GPU)  # log2 distance sqrt(2) vs sqrt(4)
    assert dataclasses.replace(near_large, num_splits=1) == large and near_large.num_splits == 2
    assert find_config(GQA, Bucket(8, 8192, 3), GPU).block_n == 32  # Lq 3 is nearer 4 than 1
    # Splits never shorter than one key block: 256 keys / 16 per block.
    assert find_config(GQA, Bucket(1, 256, 1), GPU).num_splits == 16
    assert find_config(GQA, Bucket(2, 128, 1), GPU).num_splits == 8
    # Equidistant buckets: the larger one wins (its split count scales down, never up).
    assert dataclasses.replace(find_config(GQA, Bucket(32, 8192, 1), GPU), num_splits=1) == large


def test_stale_template_version_is_ignored_with_one_warning(table_dirs):
    user_dir, shipped_dir = table_dirs
    stale_config, user_config = KernelConfig(block_n=16, num_splits=2), KernelConfig(block_n=64, num_splits=3)
    write_table(make_table([entry(GQA, Bucket(8, 8192, 1), stale_config)], version="0123456789abcdef"),
                shipped_dir / tables.gpu_file_name(GPU))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in (1, 8, 32, 128):
            assert lookup_config(GQA, shape_of(batch, 8192), CUDA0) is None
        clear_lookup_caches()  # even when the tables are parsed again
        assert lookup_config(GQA, shape_of(8, 8192), CUDA0) is None
    stale = [w for w in caught if issubclass(w.category, StaleTableWarning)]
    assert len(stale) == 1 and "0123456789abcdef" in str(stale[0].message)

    write_table(make_table([entry(GQA, Bucket(8, 8192, 1), user_config)]), user_dir / tables.gpu_file_name(GPU))
    clear_lookup_caches()
    assert lookup_config(GQA, shape_of(8, 8192), CUDA0) == user_config


def test_unreadable_table_is_ignored_with_a_warning(table_dirs):
    _, shipped_dir = table_dirs
    (shipped_dir / tables.gpu_file_name(GPU)).write_text('{"format": 1}')
    with pytest.warns(lookup.BadTableWarning, match="missing key"):
        assert lookup_config(GQA, shape_of(8, 8192), CUDA0) is None


# ---------------------------------------------------------------------------------------------- driver
def test_driver_writes_the_table_after_each_bucket_and_skips_done_ones(tmp_path):
    gta = PRESET_SPECS["gta"]
    jobs = plan_jobs([GQA, gta], batches=[4, 16], capacities=[8192], query_lens=[1], page_size=64)
    assert [(j.spec.kind, j.shape.batch) for j in jobs] == [("gqa", 4), ("gta", 4), ("gqa", 16), ("gta", 16)]
    out = tmp_path / "out" / "table.json"
    kernels = []

    def factory(job):
        kernels.append(SyntheticKernel(job.spec, SMALL_GPU))
        return kernels[-1]

    summary = run_tuning(jobs, out_path=out, limits=SMALL_GPU, evaluator_factory=factory,
                         budget=TuningBudget(trials=8), storage_path=tmp_path / "journal.log",
                         command="glacompiler autotune --preset gqa gta", progress=None)
    assert len(summary.tuned) == 4 and not summary.failed and not summary.not_started
    table = read_table(out)
    assert table.gpu == "Synthetic GPU" and len(table.entries) == 4
    assert table.commands == ["glacompiler autotune --preset gqa gta"]
    # The second bucket of a spec was seeded with the first one's best config.
    first_best = table.get(GQA, Bucket(4, 8192, 1)).config
    assert any(c.block_n == first_best.block_n and c.block_d == first_best.block_d for c, _ in kernels[2].calls[:3])

    again = run_tuning(jobs, out_path=out, limits=SMALL_GPU, evaluator_factory=factory,
                       budget=TuningBudget(trials=8), progress=None)
    assert len(again.already_done) == 4 and not again.tuned and len(kernels) == 4


def test_driver_stops_at_the_total_time_budget(tmp_path):
    jobs = plan_jobs([GQA], batches=[1, 2, 4], capacities=[1024], query_lens=[1], page_size=64)
    summary = run_tuning(jobs, out_path=tmp_path / "t.json", limits=SMALL_GPU,
                         evaluator_factory=lambda job: SyntheticKernel(job.spec), budget=TuningBudget(trials=4),
                         total_time_s=1e-3, progress=None)
    assert not summary.tuned and len(summary.not_started) == 3
    assert not (tmp_path / "t.json").exists()


# ----------------------------------------------------------------------- the GPU objective, interpreted
def test_kernel_benchmark_runs_and_checks_real_kernels(tmp_path, monkeypatch, interpret_kernels):
    from glacompiler.tuning import benchmark

    monkeypatch.setenv("GLACOMPILER_CACHE_DIR", str(tmp_path))
    spec = spec_from_dims(Dims("gqa", heads=4, kv_heads=2, head_dim=16, rope_dim=0), dtype="float32", page_size=16)
    shape = ProblemShape(batch=2, query_len=2, capacity=64, page_size=16)
    timed = []

    def wall_clock_ms(fn, quick):  # the interpreter has no CUDA events
        timed.append(quick)
        fn()
        return 1.0 if quick else 2.0

    bench = benchmark.KernelBenchmark(spec, shape, torch.device("cpu"), SMALL_GPU, timer=wall_clock_ms, check_capacity=64)
    assert len(bench.inputs) == benchmark.MAX_INPUT_SETS  # a tiny problem: rotate sets past 2 x L2
    assert bench.inputs[0]["page_table"].shape == (2, 4)
    assert not set(bench.inputs[0]["page_table"].flatten().tolist()) & set(bench.inputs[1]["page_table"].flatten().tolist())
    default = KernelConfig(block_m=16, block_n=16, block_d=32, num_splits=1)
    other = KernelConfig(block_m=16, block_n=32, block_d=16, num_splits=2, dv_split=1)
    assert bench.time_us(default, quick=True) == 1000.0 and bench.time_us(default, quick=False) == 2000.0
    assert bench.output_mismatch(other, default) is None

    real = benchmark.attention_with_kvcache_config

    def off_by_a_bit(*args, config, **kwargs):
        out, lse = real(*args, config=config, **kwargs)
        return (out + 0.1, lse) if config == other else (out, lse)

    monkeypatch.setattr(benchmark, "attention_with_kvcache_config", off_by_a_bit)
    assert "output error" in bench.output_mismatch(other, default)
    bench.close()


def test_compiled_resources_are_picked_up_from_the_launch_log():
    import logging

    from glacompiler.tuning import benchmark

    recorder = benchmark._CompiledResourceRecorder()
    config = KernelConfig(block_n=64)
    logger = logging.getLogger("glacompiler")
    with benchmark._recording(recorder):
        logger.debug("%s %s: regs %s, spills %s, shared %s", GQA.key(), config, 168, 0, 14336)
        logger.debug("unrelated %s", 1)
    logger.debug("%s %s: regs %s, spills %s, shared %s", GQA.key(), KernelConfig(), 1, 2, 3)  # not recording
    assert recorder.by_config == {config: {"registers": 168, "spill_bytes": 0, "shared_bytes": 14336}}


# ------------------------------------------------------------------------------------------------- CLI
def run_cli(argv, capsys):
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("argv,message", [
    (["autotune", "--preset", "mha7"], "invalid choice: 'mha7'"),
    (["autotune"], "say what to tune"),
    (["autotune", "--preset", "mla", "--heads", "64"], "cannot be combined with --preset"),
    (["autotune", "--kind", "gqa", "--heads", "32"], "needs --kv-heads/--latent-heads, --head-dim/--latent-dim"),
    (["autotune", "--kind", "gqa", "--heads", "30", "--kv-heads", "8", "--head-dim", "128"], "not a multiple"),
    (["autotune", "--kind", "gqa", "--heads", "32", "--kv-heads", "8", "--head-dim", "100"], "bad dims"),
    (["autotune", "--kind", "gla", "--heads", "128", "--latent-heads", "1", "--latent-dim", "512"],
     "describe mla, not gla"),
    (["autotune", "--kind", "gta", "--heads", "16", "--kv-heads", "4", "--head-dim", "128", "--rope-dim", "128"],
     "d_R < d_h"),
    (["autotune", "--kind", "mla", "--heads", "128", "--latent-dim", "512", "--rope-dim", "40"], "rope dim"),
    (["autotune", "--preset", "gqa", "--page-size", "48"], "power of two"),
    (["autotune", "--preset", "gqa", "--seqlen", "1000"], "multiples of the page size"),
    (["autotune", "--preset", "gqa", "--q-len", "32"], "at most 16"),
    (["autotune", "--preset", "gqa", "--batch", "0"], "must be positive"),
    (["autotune", "--preset", "gqa", "--trials", "0"], "--trials must be >= 1"),
    (["autotune", "--preset", "gqa", "--dtype", "int8"], "invalid choice: 'int8'"),
])
def test_cli_rejects_impossible_requests(argv, message, capsys):
    code, output = run_cli(argv, capsys)
    assert code == 2
    assert message in output


def test_cli_without_a_gpu_says_so(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, output = run_cli(["autotune", "--preset", "gqa", "--batch", "1", "--seqlen", "1024", "--q-len", "1"], capsys)
    assert code == 2 and "CUDA GPU" in output and "Traceback" not in output


def test_cli_specs_match_the_issue():
    from argparse import Namespace

    def specs(**kwargs):
        defaults = dict(preset=None, kind=None, heads=None, kv_heads=None, head_dim=None, rope_dim=None,
                        dtype="bfloat16", page_size=64)
        return command.specs_from_args(Namespace(**{**defaults, **kwargs}))

    (gla,) = specs(kind="gla", heads=128, kv_heads=2, head_dim=256, rope_dim=64)
    assert gla == PRESET_SPECS["gla2"]
    assert (gla.head_dim_q, gla.head_dim_v, gla.rope_dim, gla.tied, gla.paged) == (256, 256, 64, True, True)
    (gta,) = specs(preset=["gta"])
    assert (gta.num_q_heads, gta.num_kv_heads, gta.head_dim_q, gta.head_dim_k, gta.head_dim_v, gta.rope_dim) == \
        (16, 4, 64, 128, 128, 64)
    mla, gqa = specs(preset=["mla", "gqa", "mla"])
    assert (mla.num_kv_heads, mla.head_dim_k, mla.rope_dim) == (1, 512, 64)
    assert (gqa.kind, gqa.num_kv_heads, gqa.head_dim_v, gqa.tied) == ("gqa", 8, 128, False)
    (contiguous,) = specs(kind="mha", heads=8, head_dim=64, page_size=0)
    assert contiguous.kind == "mha" and contiguous.num_kv_heads == 8 and not contiguous.paged


def test_cli_autotune_end_to_end_on_a_synthetic_kernel(tmp_path, monkeypatch, capsys):
    """The whole command with the GPU pieces swapped out: the table it writes, and what it prints."""
    from glacompiler.tuning import benchmark, resources

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(resources.DeviceLimits, "for_device", classmethod(lambda cls, device: SMALL_GPU))
    monkeypatch.setattr(benchmark, "KernelBenchmark", lambda spec, shape, device, limits: SyntheticKernel(spec))
    argv = ["autotune", "--preset", "gqa", "--batch", "4", "--seqlen", "1024", "8192", "--q-len", "1",
            "--trials", "6", "--out", f"{tmp_path}/"]
    code, output = run_cli(argv, capsys)
    assert code == 0, output
    table = read_table(tmp_path / "Synthetic_GPU.json")
    assert {entry.bucket for entry in table.entries.values()} == {Bucket(4, 1024, 1), Bucket(4, 8192, 1)}
    assert table.commands == ["glacompiler autotune --preset gqa --dtype bfloat16 --page-size 64 --batch 4 "
                              "--seqlen 1024 8192 --q-len 1 --trials 6"]
    assert (tmp_path / "Synthetic_GPU.journal").exists()
    assert "tuned 2, already in the table 0" in output and "speed-up over the heuristic: median x" in output
    code, output = run_cli(argv, capsys)  # everything is in the table already
    assert code == 0 and "tuned 0, already in the table 2" in output


def test_cli_out_path(tmp_path, monkeypatch):
    monkeypatch.setenv("GLACOMPILER_CACHE_DIR", str(tmp_path / "cache"))
    assert command.resolve_out_path(None, "NVIDIA H200") == tmp_path / "cache" / "configs" / "NVIDIA_H200.json"
    assert command.resolve_out_path(str(tmp_path), "NVIDIA H200") == tmp_path / "NVIDIA_H200.json"
    assert command.resolve_out_path(str(tmp_path / "x.json"), "NVIDIA H200") == tmp_path / "x.json"


def test_configs_show_prints_a_table(tmp_path, capsys):
    path = tmp_path / "NVIDIA_H200.json"
    write_table(make_table([entry(PRESET_SPECS["mla"], Bucket(128, 8192, 1), KernelConfig(block_m=64, num_splits=2),
                                  tuned_us=500.0, default_us=650.0)], gpu="NVIDIA H200"), path)
    code, output = run_cli(["configs", "show", str(path)], capsys)
    assert code == 0
    assert "mla 128/1 512:512:512+64 bfloat16 paged" in output
    assert "128x8192x1" in output and "500.0" in output and "650.0" in output and "x1.30" in output
    assert "median x1.30, worst x1.30" in output
    code, output = run_cli(["configs", "show", str(tmp_path / "missing.json")], capsys)
    assert code == 1 and "no table" in output


def test_online_tuning_needs_a_gpu(monkeypatch):
    from glacompiler.tuning import tune_for_shapes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        tune_for_shapes([(GQA, SHAPE)])


def test_shipped_tables_are_valid_and_current():
    """Every table in tuned_configs/ passes the schema and was tuned for the templates as they are now:
    a template change without retuning would silently drop these tables (stale) at run time."""
    paths = sorted(p for p in tables.shipped_tables_dir().iterdir() if p.name.endswith(".json"))
    assert paths, "no shipped table"
    for path in paths:
        table = tables.read_table(path)  # schema and entry checks
        assert table.is_current, f"{path.name} was tuned for other templates"
        assert table.entries
        for item in table.entries.values():
            assert item.tuned_us <= item.default_us * 1.05

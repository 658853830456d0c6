"""Tuning runs over many buckets (glacompiler/tuning/driver.py), the GPU objective (benchmark.py) with the real
kernels under the Triton interpreter, and online tuning's refusal without a GPU."""
import dataclasses

import pytest
import torch

optuna = pytest.importorskip("optuna")

from glacompiler.kernels.portable.config import PortableConfig  # noqa: E402
from glacompiler.presets import PAPER_SPECS  # noqa: E402
from glacompiler.spec import AttentionSpec, ProblemShape  # noqa: E402
from glacompiler.tables.table_file import Bucket, read_table, write_table  # noqa: E402
from glacompiler.tuning.driver import jobs_for_bucket, plan_jobs, run_tuning  # noqa: E402
from glacompiler.tuning.study import TuningBudget  # noqa: E402
from tuning_doubles import GQA, H100, SHAPE, SMALL_GPU, SyntheticKernel  # noqa: E402

import glacompiler  # noqa: E402

GQA_SMALL = AttentionSpec.grouped(4, 2, 16)


def test_driver_writes_the_table_after_each_bucket_and_skips_done_ones(tmp_path):
    gta = PAPER_SPECS["gta"]
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
    first_best = table.get("portable", GQA, Bucket(4, 8192, 1)).config
    assert any(c.block_n == first_best.block_n and c.block_d == first_best.block_d for c, _ in kernels[2].calls[:3])

    again = run_tuning(jobs, out_path=out, limits=SMALL_GPU, evaluator_factory=factory,
                       budget=TuningBudget(trials=8), progress=None)
    assert len(again.already_done) == 4 and not again.tuned and len(kernels) == 4

    # A retune seeds each study with the bucket's own entry right after the heuristic default: what the table had
    # competes with what the new study finds, under the same timing. The entry here is a config that the first
    # study timed and that is neither the default nor any neighbour's entry.
    own_bucket = Bucket(4, 8192, 1)
    default = kernels[0].calls[0][0]
    others = {entry.config for entry in table.entries.values() if entry.bucket != own_bucket}
    own = next(config for config, _ in kernels[0].calls
               if config != default and config not in others and not SyntheticKernel.fails(config))
    table.add(dataclasses.replace(table.get("portable", GQA, own_bucket), config=own))
    write_table(table, out)
    retune = run_tuning(jobs[:1], out_path=out, limits=SMALL_GPU, evaluator_factory=factory,
                        budget=TuningBudget(trials=8), retune=True, progress=None)
    assert len(retune.tuned) == 1 and len(kernels) == 5
    timed_in_order = list(dict.fromkeys(config for config, _ in kernels[4].calls))
    assert timed_in_order[:2] == [default, own]


def test_entries_with_open_choices_are_tuned_again_and_seed_resolved(tmp_path):
    """A bucket whose entry leaves a choice open (a table tuned before the latent kernel's block size, or the
    shared tile's warp-specialised form or its alternating schedule, was a choice) is not done; as a neighbour it
    seeds a study with the choice made as the family makes it, then made the other way (yes/no choices)."""
    from glacompiler.kernels.latent_hopper import LatentHopperConfig
    from glacompiler.tuning.driver import TuningJob, neighbour_configs
    from tuning_doubles import entry, make_table

    gla2 = PAPER_SPECS["gla2"]
    jobs = [TuningJob(gla2, ProblemShape(batch, 1, 8192, 64), "latent_hopper") for batch in (4, 16)]
    table = make_table([entry(gla2, Bucket(4, 8192, 1), LatentHopperConfig(6, False), family="latent_hopper"),
                        entry(gla2, Bucket(16, 8192, 1), LatentHopperConfig(2, False, block_n=64,
                                                                            warp_specialized=True,
                                                                            alternating=False),
                              family="latent_hopper")], gpu=SMALL_GPU.name)
    out = tmp_path / "table.json"
    write_table(table, out)
    summary = run_tuning(jobs, out_path=out, limits=SMALL_GPU, evaluator_factory=None, budget=TuningBudget(trials=2),
                         total_time_s=1e-3, progress=None)  # (no time to tune: what is left over is listed)
    assert [job.shape.batch for job in summary.already_done] == [16]
    assert [job.shape.batch for job in summary.not_started] == [4]
    # (the bucket's own entry first)
    assert neighbour_configs(read_table(out), jobs[1]) == [LatentHopperConfig(2, False, block_n=64,
                                                                              warp_specialized=True,
                                                                              alternating=False),
                                                           LatentHopperConfig(6, False, block_n=128,
                                                                              warp_specialized=True,
                                                                              alternating=False),
                                                           LatentHopperConfig(6, False, block_n=128,
                                                                              warp_specialized=False,
                                                                              alternating=False),
                                                           LatentHopperConfig(6, False, block_n=128,
                                                                              warp_specialized=True,
                                                                              alternating=True)]


def test_a_portable_entry_from_before_the_fused_combine_seeds_both_merges(tmp_path):
    """A retune of a bucket whose entry predates PortableConfig.fused_combine times its config with the combine
    launch (how the family runs it) and fused; a one-split entry has nothing to merge and seeds once."""
    from glacompiler.tuning.driver import TuningJob, neighbour_configs
    from tuning_doubles import entry, make_table

    split = PortableConfig(block_m=16, block_n=64, num_splits=3)
    whole = PortableConfig(block_m=16, block_n=64, num_splits=1)
    assert split.fused_combine is None
    table = make_table([entry(GQA, Bucket(8, 4096, 1), split), entry(GQA, Bucket(32, 4096, 1), whole)],
                       gpu=SMALL_GPU.name)
    job = TuningJob(GQA, ProblemShape(8, 1, 4096, 64), "portable")
    assert neighbour_configs(table, job) == [dataclasses.replace(split, fused_combine=False),
                                             dataclasses.replace(split, fused_combine=True),
                                             dataclasses.replace(whole, fused_combine=False)]


def test_driver_stops_at_the_total_time_budget(tmp_path):
    jobs = plan_jobs([GQA], batches=[1, 2, 4], capacities=[1024], query_lens=[1], page_size=64)
    summary = run_tuning(jobs, out_path=tmp_path / "t.json", limits=SMALL_GPU,
                         evaluator_factory=lambda job: SyntheticKernel(job.spec), budget=TuningBudget(trials=4),
                         total_time_s=1e-3, progress=None)
    assert not summary.tuned and len(summary.not_started) == 3
    assert not (tmp_path / "t.json").exists()


def test_kernel_benchmark_runs_and_checks_real_kernels(tmp_path, monkeypatch, interpret_kernels):
    from glacompiler.tuning import benchmark

    monkeypatch.setenv("GLACOMPILER_CACHE_DIR", str(tmp_path))
    spec = AttentionSpec.grouped(4, 2, 16, dtype="float32", paged=True)
    shape = ProblemShape(batch=2, query_len=2, capacity=64, page_size=16)
    timed = []

    def wall_clock_ms(fn, quick):  # the interpreter has no CUDA events (nor graphs, which the GPU's timer captures fn in)
        timed.append(quick)
        fn()
        fn()
        return 1.0 if quick else 2.0

    bench = benchmark.KernelBenchmark(spec, shape, torch.device("cpu"), SMALL_GPU, timer=wall_clock_ms, check_capacity=64)
    assert len(bench.inputs) == benchmark.MAX_INPUT_SETS  # a tiny problem: rotate sets past 2 x L2
    assert bench.inputs[0]["page_table"].shape == (2, 4)
    assert not set(bench.inputs[0]["page_table"].flatten().tolist()) & set(bench.inputs[1]["page_table"].flatten().tolist())
    default = PortableConfig(block_m=16, block_n=16, block_d=32, num_splits=1)
    other = PortableConfig(block_m=16, block_n=32, block_d=16, num_splits=2, dv_split=1)
    real = benchmark.attention_with_kvcache_config
    called_on = []

    def recording(*args, config, **kwargs):
        called_on.append(kwargs["page_table"].data_ptr())
        return real(*args, config=config, **kwargs)

    monkeypatch.setattr(benchmark, "attention_with_kvcache_config", recording)
    assert bench.time_us(default, quick=True) == 1000.0 and bench.time_us(default, quick=False) == 2000.0
    # One call to compile, then the timed calls follow one another over the input sets in turn.
    assert called_on == [bench.inputs[i]["page_table"].data_ptr() for i in (0, 0, 1, 2, 3)]
    monkeypatch.setattr(benchmark, "attention_with_kvcache_config", real)
    assert bench.output_mismatch(other, default) is None

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
    config = PortableConfig(block_n=64)
    logger = logging.getLogger("glacompiler")
    with benchmark._recording(recorder):
        logger.debug("%s %s: regs %s, spills %s, shared %s", GQA.key(), config, 168, 0, 14336)
        logger.debug("unrelated %s", 1)
    logger.debug("%s %s: regs %s, spills %s, shared %s", GQA.key(), PortableConfig(), 1, 2, 3)  # not recording
    assert recorder.by_config == {config: {"registers": 168, "spill_bytes": 0, "shared_bytes": 14336}}


@pytest.mark.parametrize("masked", [False, True])
def test_the_recorder_reads_what_the_portable_launcher_logs(interpret_kernels, masked):
    """The real launcher's record (a masked call logs one per pass), here under the interpreter, where a compiled
    kernel's registers, spills and shared bytes are unknown ("?")."""
    from glacompiler.op import prepared
    from glacompiler.problems import make_decode_problem
    from glacompiler.tuning import benchmark

    problem = make_decode_problem(GQA_SMALL, batch=2, query_len=1, capacity=40, mask="bool" if masked else None,
                                  mask_rows="key")
    recorder = benchmark._CompiledResourceRecorder()
    prepared.clear_prepared_calls()
    with benchmark._recording(recorder):
        glacompiler.attention_with_kvcache(**problem.kwargs)
    prepared.clear_prepared_calls()
    (config, resources), = recorder.by_config.items()
    assert isinstance(config, PortableConfig)
    assert resources == {"registers": "?", "spill_bytes": "?", "shared_bytes": "?"}


def test_online_tuning_needs_a_gpu(monkeypatch):
    from glacompiler.tuning import tune_for_shapes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="CUDA GPU"):
        tune_for_shapes([(GQA, SHAPE)])


def test_jobs_tune_the_family_the_op_runs_on_the_device(monkeypatch):
    monkeypatch.setattr("glacompiler.kernels.latent_hopper.device_problem", lambda device: None)  # as on an H100
    mla = PAPER_SPECS["mla"]
    jobs = plan_jobs([mla, GQA], batches=[1], capacities=[1024], query_lens=[1], page_size=64,
                     device=torch.device("cuda", 0))
    assert [(job.spec.kind, job.family) for job in jobs] == [("mla", "latent_hopper"), ("gqa", "portable")]
    small_pages = plan_jobs([mla], batches=[1], capacities=[1024], query_lens=[1], page_size=8,
                            device=torch.device("cuda", 0))
    assert small_pages[0].family == "portable"  # pages of 8 keys stay on the portable kernels


def test_latent_buckets_a_graph_launches_on_the_portable_kernels_are_tuned_for_them_too(monkeypatch):
    """Without CUDA graphs the backend launches latent calls of few rows and a bounded cache on the portable kernels
    (compiler/rewrite/graph_launches.py): those buckets get a portable job beside the Hopper kernel's."""
    monkeypatch.setattr("glacompiler.kernels.latent_hopper.device_problem", lambda device: None)  # as on an H100
    gla2_xl = AttentionSpec.latent(16, 2, 256, 64)  # 8 rows a latent head at Lq 1, 16 at Lq 2, 32 at Lq 4
    cuda = torch.device("cuda", 0)
    jobs = plan_jobs([gla2_xl, PAPER_SPECS["mla"]], batches=[64], capacities=[8192], query_lens=[1, 2, 4],
                     page_size=64, device=cuda)
    assert [(job.spec.kind, job.shape.query_len, job.family) for job in jobs] == [
        ("gla", 1, "latent_hopper"), ("gla", 1, "portable"), ("mla", 1, "latent_hopper"),  # MLA: 128 rows
        ("gla", 2, "latent_hopper"), ("gla", 2, "portable"), ("mla", 2, "latent_hopper"),
        ("gla", 4, "latent_hopper"), ("mla", 4, "latent_hopper")]  # 32 rows: the Hopper kernel's op, in graphs too
    # 64 x 32768 slots of 576 elements in 2 bytes: 2.25 GiB, past the bound a graph launches.
    long_caches = plan_jobs([gla2_xl], batches=[64], capacities=[32768], query_lens=[1], page_size=64, device=cuda)
    assert [job.family for job in long_caches] == ["latent_hopper"]
    # A backend whose steps CUDA graphs replay launches no latent call on the portable kernels: no portable job.
    shape = ProblemShape(batch=64, query_len=1, capacity=8192, page_size=0)
    assert [job.family for job in jobs_for_bucket(gla2_xl, shape, cuda, latent_rows_in_graph=0)] == ["latent_hopper"]
    assert [job.family for job in jobs_for_bucket(gla2_xl, shape, None)] == ["portable"]  # no device: portable only


def test_online_tuning_tunes_each_bucket_once_per_family(monkeypatch, tmp_path):
    """tune_for_shapes (backend(autotune=True)) plans a bucket's jobs as the offline tuner does, once per (family,
    spec, bucket) however many sites share it; with latent rows in graph 0 (CUDA graphs) only the op's family."""
    from glacompiler.kernels.common.device_limits import DeviceLimits
    from glacompiler.tuning import tune_for_shapes

    monkeypatch.setenv("GLACOMPILER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr("glacompiler.kernels.latent_hopper.device_problem", lambda device: None)  # as on an H100
    monkeypatch.setattr(DeviceLimits, "for_device", classmethod(lambda cls, device: H100))
    planned = []
    monkeypatch.setattr("glacompiler.tuning.driver.run_tuning", lambda jobs, **kwargs: planned.append(jobs))
    gla2_xl = AttentionSpec.latent(16, 2, 256, 64)
    sites = [(gla2_xl, ProblemShape(64, 1, 8192, 0))] * 3 + [(GQA, SHAPE)]
    for rows in (None, 0):
        tune_for_shapes(sites, latent_rows_in_graph=rows, progress=None)
    assert [[(job.spec.kind, job.family) for job in jobs] for jobs in planned] == [
        [("gla", "latent_hopper"), ("gla", "portable"), ("gqa", "portable")],
        [("gla", "latent_hopper"), ("gqa", "portable")]]

"""The portable kernel's fused combine (PortableConfig.fused_combine): the last program of a row block to finish merges
its splits, with counts that each launch leaves at zero. Interpreter (fp16/fp32) and GPU (bf16) cases, against the
float64 reference with FlashAttention's rule and against the same config's separate combine launch."""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from glacompiler.kernels.common.split_buffers import SplitBuffers
from glacompiler.kernels.common.triton_launch import traced_launches
from glacompiler.kernels.portable import PortableConfig
from glacompiler.op import prepared
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.spec import default_softmax_scale

from kernel_cases import CPU_SPECS

OP_ARGS = ("q", "k_cache", "v_cache", "q_rope", "k_rope_cache", "cache_seqlens", "page_table", "attn_mask")


@pytest.fixture(autouse=True)
def poisoned_split_buffers(monkeypatch):
    """Split buffers that start as NaN (and outputs too): a merge that reads a partial no program wrote, or a store
    that misses, shows. (Held partials, or a freed buffer's memory, otherwise hold the last call's partials.)"""
    allocate = SplitBuffers.allocate_for_call

    def poisoned(self, q, hold, keep_lse=True):
        buffers = allocate(self, q, hold, keep_lse)
        for tensor in buffers:
            tensor.fill_(float("nan"))
        return buffers

    monkeypatch.setattr(SplitBuffers, "allocate_for_call", poisoned)


def _plan(problem, config):
    """The prepared call an explicit config makes for a problem (its plan runs the call)."""
    kw = problem.kwargs
    q_rope = kw.get("q_rope")
    scale = default_softmax_scale(kw["q"].shape[-1], 0 if q_rope is None else q_rope.shape[-1])
    return prepared.prepare_call(*(kw.get(name) for name in OP_ARGS), scale, kw["causal"], 0, None, 0.0,
                                 kw.get("alibi_slopes"), kw.get("sinks"), (-1, -1), config=config)


def _run(call, problem):
    kw = problem.kwargs
    return call.run(*(kw.get(name) for name in OP_ARGS), None, kw.get("alibi_slopes"), kw.get("sinks"))


def assert_same_merge(out, lse, expected_out, expected_lse):
    """Two merges of the same partials: the fused one adds the splits one after another, the combine kernel in a
    tree, so they may differ by the rounding of the sum's additions (a few units in the last place), no more."""
    assert torch.equal(out.isnan(), expected_out.isnan()) and torch.equal(lse.isinf(), expected_lse.isinf())
    ulps = 4 * torch.finfo(out.dtype).eps * expected_out.float().abs().clamp_min(1e-3)
    assert ((out.float() - expected_out.float()).abs() <= ulps).all()
    finite = lse.isfinite()
    assert torch.allclose(lse[finite], expected_lse[finite], rtol=1e-6, atol=1e-6)


def _fused_against_the_combine_launch(problem, config):
    """Runs the config with and without the fused combine, twice each: the fused outputs agree with the launch's to
    the rounding of the sum and meet FlashAttention's rule, a repeat gives the same bits, and the counts are back at
    zero after each call."""
    plain = _plan(problem, dataclasses.replace(config, fused_combine=False))
    fused = _plan(problem, dataclasses.replace(config, fused_combine=True))
    assert fused.plan.fused and not plain.plan.fused
    expected_out, expected_lse = _run(plain, problem)
    first = None
    for _ in range(2):
        out, lse = _run(fused, problem)
        assert fused.plan.split_counts is not None
        assert fused.plan.split_counts.count_nonzero().item() == 0
        assert_same_merge(out, lse, expected_out, expected_lse)
        if first is not None:
            assert torch.equal(out, first[0]) and torch.equal(lse, first[1])
        first = out, lse
    check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("name, query_len, page_size, mask, dv_split", [
    ("gqa", 1, 0, None, 1),
    ("gta", 3, 16, "bool", 1),  # per-head masks: the sparse pass
    ("mla", 2, 16, None, 2),  # a padded last latent chunk; output dims over two programs (one writes the LSE)
    ("gla2", 2, 0, "additive", 1),
    ("mha", 3, 16, None, 4),
])
def test_fused_combine_matches_the_combine_launch(interpret_kernels, name, query_len, page_size, mask, dv_split):
    problem = make_decode_problem(CPU_SPECS[name], batch=3, query_len=query_len, capacity=70, page_size=page_size,
                                  mask=mask, mask_rows="head" if mask == "bool" else "key", seqlens=[0, 37, 70],
                                  dtype=torch.float32, generator=torch.Generator().manual_seed(query_len + page_size))
    # Three splits: the empty sequence's and the short one's last split see no key.
    config = PortableConfig(block_m=16, block_n=16, block_d=32, num_splits=3, dv_split=dv_split)
    _fused_against_the_combine_launch(problem, config)


def test_each_mask_pass_counts_only_its_own_sequences(interpret_kernels):
    """A masked call is two launches (dense and sparse pass), each taking some sequences: a sequence's splits are
    counted and merged once, by the pass that owns it. Sequences 0 and 2 have dense masks, sequence 1 a hole."""
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=3, query_len=1, capacity=128, causal=False,
                                  seqlens=[128] * 3, dtype=torch.float16, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(3, 1, 1, 128, dtype=torch.bool)
    for b, (lo, hi) in enumerate([(13, 57), (0, 128), (70, 100)]):
        mask[b, ..., lo:hi] = True
    mask[1, ..., 30:45] = False
    problem.kwargs["attn_mask"] = mask
    assert torch.ops.glacompiler.mask_key_range(mask, 3, 128)[2].tolist() == [1, 0, 1]
    config = PortableConfig(block_m=16, block_n=16, block_d=32, num_splits=4)
    assert len(_plan(problem, config).plan.launches) == 2
    _fused_against_the_combine_launch(problem, config)


def test_one_split_has_nothing_to_fuse():
    assert PortableConfig(num_splits=1, fused_combine=True) == PortableConfig(num_splits=1, fused_combine=False)
    assert PortableConfig(num_splits=2, fused_combine=True).fused_combine


def test_a_traced_plan_launches_the_combine(interpret_kernels):
    """A graph traced from the plan (compiler/rewrite/graph_launches.py) cannot own the counts: the plan takes the
    separate combine there, and makes no counts."""
    problem = make_decode_problem(CPU_SPECS["gqa"], batch=2, query_len=1, capacity=40, dtype=torch.float32)
    call = _plan(problem, PortableConfig(block_m=16, block_n=16, block_d=32, num_splits=2, fused_combine=True))
    with traced_launches():
        assert call.plan._counts(problem.kwargs["q"]) is None
    assert call.plan.split_counts is None


@pytest.mark.gpu
@pytest.mark.parametrize("name, page_size, mask, splits", [
    ("gqa", 64, None, 8), ("gta", 16, "bool", 5), ("gla2", 0, None, 64), ("mla", 64, None, 3), ("gta", 0, None, 128),
])
def test_fused_combine_on_the_gpu(cuda_device, name, page_size, mask, splits):
    """bf16 on the compiled kernels: the fused merge agrees with the combine launch's, the counts are back at zero."""
    problem = make_decode_problem(CPU_SPECS[name], batch=5, query_len=2, capacity=1000, page_size=page_size, mask=mask,
                                  seqlens=[0, 1, 333, 999, 1000], dtype=torch.bfloat16, device=cuda_device,
                                  generator=torch.Generator().manual_seed(splits))
    _fused_against_the_combine_launch(problem, PortableConfig(block_m=16, block_n=32, block_d=64, num_splits=splits))


@pytest.mark.gpu
def test_fused_combine_in_cuda_graphs(cuda_device):
    """A plan made by an eager call and captured: replays on fresh data equal eager calls (the counts a replay
    leaves are zero). A plan whose first call is captured takes the combine launch (zeros made in a capture are
    zeroed only by replays), and is right too."""
    problem = make_decode_problem(CPU_SPECS["gta"], batch=4, query_len=1, capacity=512, page_size=64,
                                  dtype=torch.bfloat16, device=cuda_device, seqlens=[1, 100, 300, 512], poison=False)
    config = PortableConfig(block_m=16, block_n=32, block_d=64, num_splits=16, fused_combine=True)
    _run(_plan(problem, dataclasses.replace(config, fused_combine=False)), problem)  # compiled outside the capture
    eager_first = _plan(problem, config)
    _run(eager_first, problem)
    captured_first = _plan(problem, config)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    graphs = []
    with torch.cuda.stream(side):
        for call in (eager_first, captured_first):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                outputs = _run(call, problem)
            graphs.append((graph, outputs))
    torch.cuda.current_stream().wait_stream(side)
    assert eager_first.plan.split_counts is not None and captured_first.plan.split_counts is None
    for _ in range(3):
        problem.kwargs["q"].copy_(torch.randn_like(problem.kwargs["q"]))
        for graph, _ in graphs:
            graph.replay()
        torch.cuda.synchronize()
        expected_out, expected_lse = _run(eager_first, problem)
        (fused_out, fused_lse), (launch_out, launch_lse) = (outputs for _, outputs in graphs)
        assert torch.equal(fused_out, expected_out) and torch.equal(fused_lse, expected_lse)
        assert_same_merge(launch_out, launch_lse, expected_out, expected_lse)
    assert eager_first.plan.split_counts.count_nonzero().item() == 0
    check_fa_rule(expected_out, expected_lse, problem)


COMPILE_FUSED_FOR_SM90 = """
import json, sys
sys.path.insert(0, sys.argv[1])
from pipelined_loads import SPECS, compile_for_sm90, registers
from glacompiler.kernels.portable import PortableConfig
report = {}
for spec, splits, mask in (("gta", 4, "no"), ("gqa64", 32, "sparse")):
    config = PortableConfig(block_m=16, block_n=64, num_splits=splits, num_stages=2, fused_combine=True)
    compiled = compile_for_sm90(SPECS[spec], config, mask != "no", page_size=64)
    ptx = compiled.asm["ptx"]
    report[spec] = dict(acq_rel_add="atom.global.gpu.acq_rel.add" in ptx, l2_loads="ld.global.cg" in ptx,
                        registers=registers(ptx))
print(json.dumps(report))
"""


@pytest.mark.slow
def test_fused_variant_compiles_for_sm90():
    """The fused kernel through Triton's compiler for an H100/H200 (the interpreter runs it as Python and would miss
    what only the compiler rejects, such as a module constant it cannot read): its counts are taken with a gpu-scope
    acquire-release add and the partials read from L2."""
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    benchmarks = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
    result = subprocess.run([sys.executable, "-c", COMPILE_FUSED_FOR_SM90, str(benchmarks)], capture_output=True,
                            text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for spec, facts in report.items():
        assert facts["acq_rel_add"] and facts["l2_loads"], (spec, facts)
        assert facts["registers"] <= 255, (spec, facts)

"""The combine launched dependent on a portable split kernel that signals it (PDL, kernels/common/dependent_launch.py):
where it is chosen, that the choice reaches the kernels (the split kernel's signal, the combine's wait) and the launch
(launch_pdl), that graphs take the kernels without either, and on a Hopper GPU that such calls, eager and replayed in
a CUDA graph, give what the ordinary launches give."""
import pytest
import torch

from glacompiler.kernels.common import combine, dependent_launch, triton_launch
from glacompiler.kernels.common.combine import combine_launch, combine_splits_reference

from launch_doubles import FakeCompiled, FakeJIT, install_fresh_launch_state
from test_combine import partial_outputs

CUDA = torch.device("cuda", 0)


@pytest.fixture
def hopper_capable(monkeypatch):
    """A CUDA device 0 of compute capability 9.0 as the module sees it, with no GPU here; the switch on."""
    monkeypatch.setenv(dependent_launch.ENVIRONMENT_SWITCH, "1")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dependent_launch, "_capable", lambda index: index == 0)
    monkeypatch.setattr(dependent_launch, "_triton_launches_with_pdl", lambda: True)


@pytest.mark.parametrize("value, setting", [(None, "auto"), ("", "auto"), ("Auto", "auto"), ("1", "on"),
                                            (" true ", "on"), ("YES", "on"), ("on", "on"), ("0", "off"),
                                            ("false", "off"), ("Off", "off"), ("no", "off")])
def test_the_switch_reads_the_usual_spellings(hopper_capable, monkeypatch, value, setting):
    if value is None:
        monkeypatch.delenv(dependent_launch.ENVIRONMENT_SWITCH)
    else:
        monkeypatch.setenv(dependent_launch.ENVIRONMENT_SWITCH, value)
    assert dependent_launch.switch_setting() == setting
    assert dependent_launch.dependent_launch_enabled(CUDA) is (setting != "off")


def test_an_unknown_switch_value_is_warned_about_and_taken_as_auto(hopper_capable, monkeypatch):
    monkeypatch.setenv(dependent_launch.ENVIRONMENT_SWITCH, "sometimes")
    dependent_launch._setting_of.cache_clear()
    with pytest.warns(RuntimeWarning, match="GLACOMPILER_PDL='sometimes'.*taken as auto"):
        assert dependent_launch.switch_setting() == "auto"


@pytest.mark.parametrize("why_not", ["cpu", "switched off", "interpreter", "older gpu", "older triton"])
def test_not_enabled(hopper_capable, monkeypatch, why_not):
    device = CUDA
    if why_not == "cpu":
        device = torch.device("cpu")
    elif why_not == "switched off":
        monkeypatch.setenv(dependent_launch.ENVIRONMENT_SWITCH, "0")
    elif why_not == "interpreter":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    elif why_not == "older gpu":
        monkeypatch.setattr(dependent_launch, "_capable", lambda index: False)
    else:
        monkeypatch.setattr(dependent_launch, "_triton_launches_with_pdl", lambda: False)
    assert not dependent_launch.dependent_launch_enabled(device)
    assert not dependent_launch.combine_launches_dependent(device, 1, 4)


@pytest.mark.parametrize("setting, programs, dependent", [
    (None, 396, True),    # 396 of 132 x 4 slots: 0.75 of a wave, the most the default takes
    (None, 397, False),
    (None, 256, True),    # GTA B8 S32K at 8 splits on an H100: gained 1.004-1.007x
    (None, 512, False),   # the same at 16 splits, 0.97 waves: lost 0.985x
    ("1", 1024, True),    # switched on: every split plan, however many waves
    ("0", 8, False),
])
def test_the_default_launches_the_combine_dependent_by_the_wave_fill(hopper_capable, monkeypatch, setting, programs,
                                                                     dependent):
    monkeypatch.setattr(dependent_launch, "device_multiprocessors", lambda device: 132)
    if setting is None:
        monkeypatch.delenv(dependent_launch.ENVIRONMENT_SWITCH)
    else:
        monkeypatch.setenv(dependent_launch.ENVIRONMENT_SWITCH, setting)
    assert dependent_launch.combine_launches_dependent(CUDA, programs, 4) is dependent


def planned_gqa_call(config, keys: int = 64):
    """The first call of a small GQA problem (2 sequences of `keys` keys, 8 query heads over 2 KV heads of 64, one
    query token) prepared with `config`: its plan, not launched."""
    from glacompiler.op.prepared import prepare_call

    q, k, v = torch.randn(2, 1, 8, 64), torch.randn(2, keys, 2, 64), torch.randn(2, keys, 2, 64)
    lengths = torch.full((2,), keys, dtype=torch.int32)
    return prepare_call(q, k, v, None, None, lengths, None, None, 0.125, True, 0, None, 0.0, None, None, (-1, -1),
                        config=config)


@pytest.mark.parametrize("tile, num_splits, programs, resident, dependent", [
    (dict(block_m=16), 2, 8, 4, True),                # 8 of 8 SMs x 4: within 0.75 of the slots
    (dict(block_m=16), 16, 64, 4, False),
    (dict(block_m=16, dv_split=2), 4, 32, 4, False),  # (each row block's output dims over two programs)
    (dict(block_m=16, dv_split=2), 2, 16, 4, True),
    (dict(block_m=64), 4, 16, 2, False),              # a 64-row tile: 2 resident, 16 slots
    (dict(block_m=64), 2, 8, 2, True),
])
def test_a_split_plan_counts_its_programs_and_their_residency(monkeypatch, interpret_kernels, tile, num_splits,
                                                               programs, resident, dependent):
    """The plan asks with its grid's programs (KV heads x row blocks x dv_split x sequences x splits: 2 x 1 x dv_split
    x 2 x splits) and its tile's resident programs (portable/config.py), on the interpreter's 8 stand-in SMs."""
    from glacompiler.kernels.portable import PortableConfig

    monkeypatch.delenv(dependent_launch.ENVIRONMENT_SWITCH, raising=False)
    monkeypatch.setattr(dependent_launch, "dependent_launch_enabled", lambda device: True)
    asked = []
    rule = dependent_launch.within_wave_fill
    monkeypatch.setattr(dependent_launch, "within_wave_fill",
                        lambda *counts: asked.append(counts) or rule(*counts))
    call = planned_gqa_call(PortableConfig(block_n=32, num_splits=num_splits, fused_combine=False, **tile), keys=512)
    assert asked == [(programs, 8, resident)]
    launch = call.plan.launches[0]
    assert launch.grid[0] * launch.grid[1] * launch.grid[2] == programs
    assert call.plan.signals_combine is dependent
    assert call.plan.buffers.combine_launch.launch_options == ({"launch_pdl": True} if dependent else {})
    assert ("gdc_launch_dependents()" in _source(launch.kernel)) is dependent


def test_this_triton_knows_the_launch_option():
    """torch 2.11 on pins Triton 3.6 or later, which takes launch_pdl (3.4 on)."""
    assert dependent_launch._triton_launches_with_pdl.__wrapped__()


def test_the_combine_waits_and_launches_dependent_where_enabled(interpret_kernels):
    """(Under the interpreter only so that the kernel's module loads as the CPU tests' others do.)"""
    split_out, lse = torch.empty(64, 3, 128), torch.empty(64)
    for enabled in (True, False):
        launch = combine_launch(split_out, lse, dependent=enabled)
        assert launch.constexprs["WAIT_FOR_PRIOR_GRID"] is enabled
        assert launch.launch_options == ({"launch_pdl": True} if enabled else {})


def test_the_public_combine_helper_launches_ordinarily(monkeypatch):
    """combine_splits may follow any kernel: never a dependent launch, even where the plans' combines are."""
    asked = []
    monkeypatch.setattr(combine, "combine_launch",
                        lambda split_out, lse, dependent=False: asked.append(dependent) or (lambda args: None))
    combine.combine_splits(torch.empty(4, 2, 8), torch.empty(4, 2), torch.empty(4, 8), torch.empty(4))
    assert asked == [False]


def test_launch_options_reach_the_jit_and_its_key(monkeypatch):
    install_fresh_launch_state(monkeypatch)
    kernel = FakeJIT(FakeCompiled())
    x, y = torch.zeros(8), torch.zeros(8)
    triton_launch.launch(kernel, (1,), (x, y, 7), {"A": 1, "B": 2}, 4, 2, {"launch_pdl": True})
    assert kernel.jit_calls[0][2] == {"A": 1, "B": 2, "launch_pdl": True}
    triton_launch.launch(kernel, (1,), (x, y, 7), {"A": 1, "B": 2}, 4, 2, {"launch_pdl": True})
    assert len(kernel.jit_calls) == 1  # the same options: the binary, directly
    triton_launch.launch(kernel, (1,), (x, y, 7), {"A": 1, "B": 2}, 4, 2)
    assert len(kernel.jit_calls) == 2 and kernel.jit_calls[1][2] == {"A": 1, "B": 2}  # none: another binary


def test_a_prepared_launch_passes_its_options_to_its_first_launch(monkeypatch):
    install_fresh_launch_state(monkeypatch)
    kernel = FakeJIT(FakeCompiled())
    prepared = triton_launch.PreparedLaunch(kernel, (2,), {"A": 1, "B": 2}, 4, 2, launch_options={"launch_pdl": True})
    prepared((torch.zeros(8), torch.zeros(8), 7))
    assert kernel.jit_calls[0][2]["launch_pdl"] is True
    with pytest.raises(ValueError, match="launch_options"):
        triton_launch.PreparedLaunch(kernel, (2,), {"A": 1, "B": 2}, 4, 2, first_launch=lambda args: None,
                                     launch_options={"launch_pdl": True})


@pytest.mark.gpu
def test_the_combine_waits_for_a_writer_that_signalled_at_its_start(cuda_device):
    """On sm_90: the kernel before the dependent combine signals at its start and writes the partials only after a
    long loop of loads, as late as it can; the combine, launched as soon as every program signalled, must still merge
    the partials written, eager and replayed in a CUDA graph with new partials."""
    if torch.cuda.get_device_capability(cuda_device) < dependent_launch.MIN_COMPUTE_CAPABILITY:
        pytest.skip("programmatic dependent launch needs sm_90 or later")
    import triton
    import triton.language as tl
    from triton.language.extra.cuda import gdc_launch_dependents

    @triton.jit
    def signal_then_write_late(SOURCE, ZEROS, TARGET, n, DELAY_LOADS: tl.constexpr, BLOCK: tl.constexpr):
        gdc_launch_dependents()
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        inside = offsets < n
        values = tl.load(SOURCE + offsets, mask=inside)
        for _ in range(DELAY_LOADS):  # (zeros read at run time: the compiler keeps the loop, the values stay)
            values += tl.load(ZEROS + offsets, mask=inside, other=0.0, volatile=True)
        tl.store(TARGET + offsets, values, mask=inside)

    rows, splits, head_dim_v = 2048, 3, 128
    generator = torch.Generator().manual_seed(7)
    sources = [tuple(t.to(cuda_device) for t in partial_outputs(rows, splits, head_dim_v, generator))
               for _ in range(2)]
    source = torch.empty_like(sources[0][0])
    zeros = torch.zeros_like(source)
    split_out, split_lse = torch.empty_like(source), torch.empty(rows, splits, device=cuda_device)
    out = torch.empty(rows, head_dim_v, device=cuda_device, dtype=torch.bfloat16)
    lse = torch.empty(rows, device=cuda_device)
    launch = combine_launch(split_out, lse, dependent=True)
    block = 1024

    def step():
        split_out.fill_(float("nan"))  # (a combine that read early would merge these)
        signal_then_write_late[(triton.cdiv(source.numel(), block),)](source, zeros, split_out, source.numel(),
                                                                         DELAY_LOADS=512, BLOCK=block)
        launch((split_out, split_lse, out, lse, splits, rows))

    def check(source_out, source_lse):
        expected_out, expected_lse = combine_splits_reference(source_out.cpu(), source_lse.cpu())
        torch.testing.assert_close(out.cpu().double(), expected_out, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(lse.cpu().double(), expected_lse, rtol=1e-5, atol=1e-5)

    source.copy_(sources[0][0])
    split_lse.copy_(sources[0][1])
    for _ in range(3):  # (the first launch compiles; the repeats take the C launcher)
        step()
        torch.cuda.synchronize()
        check(*sources[0])
    assert launch.compiled.metadata.launch_pdl
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    source.copy_(sources[1][0])
    split_lse.copy_(sources[1][1])
    graph.replay()
    torch.cuda.synchronize()
    check(*sources[1])


def test_a_traced_launch_takes_its_traced_form(monkeypatch):
    """A graph's launch (Inductor's, never dependent) takes the kernel and constexprs without grid dependency
    control: the combine's wait off."""
    install_fresh_launch_state(monkeypatch)
    recorded = []
    monkeypatch.setattr(triton_launch, "traced_launch",
                        lambda kernel, grid, args, constexprs, warps, stages: recorded.append((kernel, constexprs)))
    kernel, plain = FakeJIT(FakeCompiled()), FakeJIT(FakeCompiled())
    prepared = triton_launch.PreparedLaunch(kernel, (2,), {"A": 1, "B": 2}, 4, 2, launch_options={"launch_pdl": True},
                                            traced_form=(plain, {"A": 1, "B": 0}))
    with triton_launch.traced_launches():
        prepared((torch.zeros(8), torch.zeros(8), 7))
    untraced_form = triton_launch.PreparedLaunch(kernel, (2,), {"A": 1, "B": 2}, 4, 2)
    with triton_launch.traced_launches():
        untraced_form((torch.zeros(8), torch.zeros(8), 7))
    assert recorded == [(plain, {"A": 1, "B": 0}), (kernel, {"A": 1, "B": 2})]


def test_the_combine_traces_without_its_wait(interpret_kernels):
    launch = combine_launch(torch.empty(64, 3, 128), torch.empty(64), dependent=True)
    traced_kernel, traced_constexprs = launch.traced_form
    assert traced_kernel is launch.kernel and traced_constexprs["WAIT_FOR_PRIOR_GRID"] is False
    assert {k: v for k, v in traced_constexprs.items() if k != "WAIT_FOR_PRIOR_GRID"} == \
        {k: v for k, v in launch.constexprs.items() if k != "WAIT_FOR_PRIOR_GRID"}


def _source(kernel) -> str:
    """A JIT function's source, or an interpreted one's (its Python function's)."""
    import inspect

    return getattr(kernel, "src", None) or inspect.getsource(kernel.fn)


def test_a_signalling_split_kernel_traces_as_the_plain_one(monkeypatch, interpret_kernels):
    """Where dependent launch is enabled, a split plan renders its kernel with the signal and launches its combine
    dependent; a graph's launch takes the kernel without the signal. Planned only (the interpreter runs no grid
    dependency control)."""
    from glacompiler.kernels.portable import PortableConfig
    from glacompiler.kernels.portable import launch as portable_launch

    config = PortableConfig(block_m=16, block_n=32, num_splits=2, fused_combine=False)
    monkeypatch.setattr(portable_launch, "combine_launches_dependent", lambda device, programs, resident: True)
    call = planned_gqa_call(config)
    (launch,) = call.plan.launches
    traced_kernel, traced_constexprs = launch.traced_form
    assert "gdc_launch_dependents()" in _source(launch.kernel) and "gdc_launch_dependents" not in _source(traced_kernel)
    assert traced_constexprs == launch.constexprs
    assert call.plan.buffers.combine_launch.launch_options == {"launch_pdl": True}
    monkeypatch.setattr(portable_launch, "combine_launches_dependent", lambda device, programs, resident: False)
    plain_call = planned_gqa_call(config)
    assert plain_call.plan.launches[0].kernel is traced_kernel
    assert plain_call.plan.buffers.combine_launch.launch_options == {}


def test_both_passes_of_a_masked_call_signal(monkeypatch, interpret_kernels):
    """A masked call launches two split passes (dense rows, then the others) before its combine: both signal (the
    first's signal is idle: the second pass launches ordinarily), both trace as the plain kernel, the combine after
    them is dependent."""
    from glacompiler.kernels.portable import PortableConfig
    from glacompiler.kernels.portable import launch as portable_launch
    from glacompiler.op.prepared import prepare_call
    from glacompiler.problems import make_decode_problem
    from glacompiler.spec import AttentionSpec

    monkeypatch.setattr(portable_launch, "combine_launches_dependent", lambda device, programs, resident: True)
    kw = make_decode_problem(AttentionSpec.grouped(4, 2, 16), batch=2, query_len=1, capacity=64, mask="bool",
                             mask_rows="key", causal=False, poison=False).kwargs
    call = prepare_call(kw["q"], kw["k_cache"], kw["v_cache"], None, None, None, None, kw["attn_mask"], 0.25, False, 0,
                        None, 0.0, None, None, (-1, -1),
                        config=PortableConfig(block_m=16, block_n=16, num_splits=2, fused_combine=False))
    passes = list(call.plan.launches)
    assert len(passes) == 2
    for launch in passes:
        traced_kernel, _ = launch.traced_form
        assert "gdc_launch_dependents()" in _source(launch.kernel)
        assert "gdc_launch_dependents" not in _source(traced_kernel)
    assert call.plan.buffers.combine_launch.launch_options == {"launch_pdl": True}


@pytest.mark.gpu
def test_a_signalling_split_kernel_on_the_gpu(cuda_device, monkeypatch):
    """On sm_90, a split call whose kernel signals its dependent combine at its start: FlashAttention's rule
    against the float64 reference, the same output bit for bit as the plain kernel's, eager and replayed in a CUDA
    graph on fresh queries."""
    if torch.cuda.get_device_capability(cuda_device) < dependent_launch.MIN_COMPUTE_CAPABILITY:
        pytest.skip("programmatic dependent launch needs sm_90 or later")
    from glacompiler.kernels.portable import PortableConfig
    from glacompiler.op.prepared import prepare_call
    from glacompiler.problems import check_fa_rule, make_decode_problem
    from glacompiler.spec import default_softmax_scale

    from kernel_cases import CPU_SPECS

    problem = make_decode_problem(CPU_SPECS["gta"], batch=4, query_len=4, capacity=1000, page_size=64,
                                  dtype=torch.bfloat16, device=cuda_device, seqlens=[1, 333, 999, 1000], poison=False,
                                  generator=torch.Generator().manual_seed(3))
    kw = problem.kwargs
    names = ("q", "k_cache", "v_cache", "q_rope", "k_rope_cache", "cache_seqlens", "page_table", "attn_mask")
    scale = default_softmax_scale(kw["q"].shape[-1], kw["q_rope"].shape[-1])
    config = PortableConfig(block_m=16, block_n=32, block_d=64, num_splits=6, fused_combine=False)

    def planned(dependent: bool):
        monkeypatch.setenv(dependent_launch.ENVIRONMENT_SWITCH, "1" if dependent else "0")
        return prepare_call(*(kw.get(name) for name in names), scale, kw["causal"], 0, None, 0.0, None, None,
                            (-1, -1), config=config)

    def run(call):
        return call.run(*(kw.get(name) for name in names), None, None, None)

    plain, signalling = planned(False), planned(True)
    held = dict(hold_workspace=True, keep_lse=False)  # (the eager wrapper's path: the partials in its workspace)
    assert "gdc_launch_dependents" in signalling.plan.launches[0].kernel.src
    assert signalling.plan.buffers.combine_launch.launch_options == {"launch_pdl": True}
    assert "gdc_launch_dependents" not in plain.plan.launches[0].kernel.src
    out, lse = run(signalling)
    check_fa_rule(out, lse, problem)
    plain_out, plain_lse = run(plain)
    assert torch.equal(out, plain_out) and torch.equal(lse, plain_lse)
    assert signalling.plan.buffers.combine_launch.compiled.metadata.launch_pdl
    # Back to back on the held workspace: each call's split kernel overwrites the partials its predecessor's
    # combine read (an ordinary launch: it waits for that combine); each output against the plain plan's.
    queries = [torch.randn_like(kw["q"]) for _ in range(3)]
    outputs = []
    for query in queries:
        kw["q"].copy_(query)
        outputs.append(signalling.run(*(kw.get(name) for name in names), None, None, None, **held)[0].clone())
    binary = signalling.plan.buffers.combine_launch.binary  # (the C launcher a repeat takes; None: another Triton's
    assert binary is None or binary.pdl  # launcher layout, and CompiledKernel.run launches with its launch_pdl)
    for query, output in zip(queries, outputs):
        kw["q"].copy_(query)
        assert torch.equal(output, run(plain)[0])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_out, graph_lse = run(signalling)
    for _ in range(2):
        kw["q"].copy_(torch.randn_like(kw["q"]))
        graph.replay()
        expected_out, expected_lse = run(plain)
        torch.cuda.synchronize()
        assert torch.equal(graph_out, expected_out) and torch.equal(graph_lse, expected_lse)


@pytest.mark.parametrize("why_not", ["fused combine", "one split", "switched off"])
def test_no_signal_where_no_dependent_combine_follows(monkeypatch, interpret_kernels, why_not):
    """The split kernel signals only where a dependent combine launch follows it, and the combine launches dependent
    only after a kernel that signals."""
    from glacompiler.kernels.portable import PortableConfig
    from glacompiler.kernels.portable import launch as portable_launch

    monkeypatch.setattr(portable_launch, "combine_launches_dependent",
                        lambda device, programs, resident: why_not != "switched off")
    config = PortableConfig(block_m=16, block_n=32, num_splits=1 if why_not == "one split" else 2,
                            fused_combine=why_not == "fused combine")
    call = planned_gqa_call(config)
    launches = [*call.plan.launches, *(call.plan.fused_launches if call.plan.fused else ())]
    assert all("gdc_launch_dependents" not in _source(launch.kernel) for launch in launches)
    combine_after = call.plan.buffers.combine_launch  # (a fused plan's, for the launches a graph takes instead)
    assert combine_after is None or combine_after.launch_options == {}


COMPILE_FOR_SM90 = """
import json
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from glacompiler.kernels.common.combine_kernel import combine_splits_kernel
report = {}
# (rows merged together, and one row at a time: the kernel's two loops)
for wait, rows, rows_at_once in ((True, 4, True), (False, 4, True), (True, 1, False), (False, 1, False)):
    signature = dict(PART_OUT="*fp32", PART_LSE="*fp32", OUT="*bf16", LSE="*fp32", num_splits="i32", num_rows="i32",
                     HEAD_DIM_V="constexpr", BLOCK_DV="constexpr", SPLITS_POW2="constexpr", ROWS="constexpr",
                     ROWS_AT_ONCE="constexpr", WAIT_FOR_PRIOR_GRID="constexpr")
    names = list(signature)
    values = dict(HEAD_DIM_V=128, BLOCK_DV=128, SPLITS_POW2=4, ROWS=rows, ROWS_AT_ONCE=rows_at_once,
                  WAIT_FOR_PRIOR_GRID=wait)
    constants = {(names.index(name),): value for name, value in values.items()}
    compiled = triton.compile(ASTSource(combine_splits_kernel, signature, constants), target=GPUTarget("cuda", 90, 32),
                              options=dict(num_warps=4, num_stages=3))
    ptx = compiled.asm["ptx"]
    report[f"{wait} {rows_at_once}"] = dict(wait=ptx.find("griddepcontrol.wait"), first_load=ptx.find("ld.global"),
                             first_store=ptx.find("st.global"))
print(json.dumps(report))
"""


@pytest.mark.slow
def test_the_combine_waits_before_any_memory_access_on_sm90():
    """The combine compiled for an H100/H200 by Triton's compiler (the interpreter has no grid dependency control):
    with the wait, griddepcontrol.wait comes before its first global load and store in the PTX, in both of its loops
    (rows merged together, one row at a time); without, none."""
    import json
    import os
    import subprocess
    import sys

    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], capture_output=True, text=True, timeout=600,
                            env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for rows_at_once in (True, False):
        waiting, plain = report[f"True {rows_at_once}"], report[f"False {rows_at_once}"]
        assert 0 <= waiting["wait"] < waiting["first_load"] and waiting["wait"] < waiting["first_store"], waiting
        assert plain["wait"] == -1 and plain["first_load"] >= 0, plain

"""The combine launched dependent on the split kernel (PDL, kernels/common/dependent_launch.py): where it is chosen,
that the choice reaches the kernel (its wait) and the launch (launch_pdl), and on a Hopper GPU that the combine so
launched, alone and replayed in a CUDA graph, merges what the kernel before it wrote."""
import pytest
import torch

from glacompiler.kernels.common import combine, dependent_launch, triton_launch
from glacompiler.kernels.common.combine import combine_launch, combine_splits_reference

from launch_doubles import FakeCompiled, FakeJIT, install_fresh_launch_state
from test_combine import partial_outputs

CUDA = torch.device("cuda", 0)


@pytest.fixture
def hopper_capable(monkeypatch):
    """A CUDA device 0 of compute capability 9.0 as the module sees it, with no GPU here; the switch unset."""
    monkeypatch.delenv(dependent_launch.ENVIRONMENT_SWITCH, raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(dependent_launch, "_capable", lambda index: index == 0)
    monkeypatch.setattr(dependent_launch, "_triton_launches_with_pdl", lambda: True)


def test_enabled_on_a_capable_gpu_with_the_switch_unset(hopper_capable):
    assert dependent_launch.dependent_launch_enabled(CUDA)


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


def test_this_triton_knows_the_launch_option():
    """torch 2.11 on pins Triton 3.6 or later, which takes launch_pdl (3.4 on)."""
    assert dependent_launch._triton_launches_with_pdl.__wrapped__()


def test_the_combine_waits_and_launches_dependent_where_enabled(monkeypatch, interpret_kernels):
    """(Under the interpreter only so that the kernel's module loads as the CPU tests' others do.)"""
    split_out, lse = torch.empty(64, 3, 128), torch.empty(64)
    for enabled in (True, False):
        monkeypatch.setattr(combine, "dependent_launch_enabled", lambda device, enabled=enabled: enabled)
        launch = combine_launch(split_out, lse)
        assert launch.constexprs["WAIT_FOR_PRIOR_GRID"] is enabled
        assert launch.launch_options == ({"launch_pdl": True} if enabled else {})


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
def test_the_dependent_combine_merges_what_the_kernel_before_it_wrote(cuda_device, monkeypatch):
    """On sm_90: the partials written by a kernel just before the combine (so the combine's launch may overlap it),
    eager and in a replayed CUDA graph with new partials, against the float64 reference; with the switch off the
    launch is an ordinary one."""
    if torch.cuda.get_device_capability(cuda_device) < dependent_launch.MIN_COMPUTE_CAPABILITY:
        pytest.skip("programmatic dependent launch needs sm_90 or later")
    monkeypatch.delenv(dependent_launch.ENVIRONMENT_SWITCH, raising=False)
    rows, splits, head_dim_v = 2048, 3, 128  # GTA B32 Lq 4's combine
    generator = torch.Generator().manual_seed(5)
    sources = [tuple(t.to(cuda_device) for t in partial_outputs(rows, splits, head_dim_v, generator))
               for _ in range(2)]
    split_out = torch.empty(rows, splits, head_dim_v, device=cuda_device)
    split_lse = torch.empty(rows, splits, device=cuda_device)
    out = torch.empty(rows, head_dim_v, device=cuda_device, dtype=torch.bfloat16)
    lse = torch.empty(rows, device=cuda_device)
    launch = combine_launch(split_out, lse)
    assert launch.launch_options == {"launch_pdl": True} and launch.constexprs["WAIT_FOR_PRIOR_GRID"]
    source = torch.empty_like(sources[0][0])

    def step():
        torch.mul(source, 1.0, out=split_out)  # the kernel right before the combine writes its partials
        launch((split_out, split_lse, out, lse, splits, rows))

    def check(source_out, source_lse):
        expected_out, expected_lse = combine_splits_reference(source_out.cpu(), source_lse.cpu())
        torch.testing.assert_close(out.cpu().double(), expected_out, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(lse.cpu().double(), expected_lse, rtol=1e-5, atol=1e-5)

    source.copy_(sources[0][0])
    split_lse.copy_(sources[0][1])
    step()
    assert launch.compiled.metadata.launch_pdl
    check(*sources[0])
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    source.copy_(sources[1][0])
    split_lse.copy_(sources[1][1])
    out.fill_(float("nan"))
    graph.replay()
    torch.cuda.synchronize()
    check(*sources[1])
    monkeypatch.setenv(dependent_launch.ENVIRONMENT_SWITCH, "0")
    ordinary = combine_launch(split_out, lse)
    assert ordinary.launch_options == {} and not ordinary.constexprs["WAIT_FOR_PRIOR_GRID"]

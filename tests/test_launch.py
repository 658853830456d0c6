"""The launcher's step-down to fewer pipeline stages when a config does not fit the GPU's shared memory."""
import logging

import pytest
import torch
from triton.runtime.errors import OutOfResources

from glacompiler import launch
from glacompiler.config import KernelConfig


class FakeKernel:
    """Stands in for a Triton kernel that needs more shared memory than the device has above max_stages."""

    def __init__(self, max_stages):
        self.max_stages = max_stages
        self.tried = []

    def __getitem__(self, grid):
        def run(*args, num_warps, num_stages, **constexprs):
            self.tried.append(num_stages)
            if num_stages > self.max_stages:
                raise OutOfResources(200_000 + num_stages, 232_448, "shared memory")
            return ("compiled", num_stages)
        return run


def test_steps_down_once_and_remembers(caplog):
    kernel = FakeKernel(max_stages=1)
    config = KernelConfig(num_stages=3)
    with caplog.at_level(logging.WARNING, logger="glacompiler"):
        first = launch._launch_fitting(kernel, (1,), (), {"MASK_PER_ROW": True}, config, "module_a")
        second = launch._launch_fitting(kernel, (1,), (), {"MASK_PER_ROW": True}, config, "module_a")
    assert first == second == ("compiled", 1)
    assert kernel.tried == [3, 2, 1, 1]  # the second launch goes straight to the depth that fits
    assert sum("does not fit" in r.message for r in caplog.records) == 2


def test_other_specialisations_keep_their_stages():
    kernel = FakeKernel(max_stages=3)
    config = KernelConfig(num_stages=3)
    assert launch._launch_fitting(kernel, (1,), (), {"MASK_PER_ROW": False}, config, "module_b") == ("compiled", 3)
    assert kernel.tried == [3]


def test_gives_up_at_one_stage():
    kernel = FakeKernel(max_stages=0)
    with pytest.raises(OutOfResources):
        launch._launch_fitting(kernel, (1,), (), {}, KernelConfig(num_stages=2), "module_c")
    assert kernel.tried == [2, 1]


# ---- the mask's key range, one kernel launch ------------------------------------------------------------------


def _expected_key_range(mask: torch.Tensor, batch: int, capacity: int) -> torch.Tensor:
    """The same reduction in plain PyTorch: any (head, token) row, then the first and last attended key."""
    mask4 = launch.mask_as_kernel_operand(mask)
    attend = mask4 != 0 if mask.dtype == torch.bool else mask4 != float("-inf")
    any_row = attend.expand(batch, -1, -1, capacity).any(dim=2).any(dim=1)
    positions = torch.arange(capacity, dtype=torch.int32)
    first = torch.where(any_row, positions, capacity).amin(dim=-1)
    last = torch.where(any_row, positions + 1, 0).amax(dim=-1)
    return torch.stack([first, last]).to(torch.int32)


def _prefix_mask(lengths, capacity):
    return (torch.arange(capacity)[None, :] < torch.tensor(lengths)[:, None])[:, None, None, :]


def _window_bias(batch, capacity, generator):
    bias = torch.full((batch, 1, 1, capacity), float("-inf"))
    for b in range(batch):
        lo = int(torch.randint(0, capacity, (1,), generator=generator))
        hi = int(torch.randint(lo, capacity + 1, (1,), generator=generator))
        bias[b, ..., lo:hi] = torch.randn(hi - lo, generator=generator)
    return bias


MASK_RANGE_CASES = {
    # name: (batch, capacity, make(generator) -> mask)
    "prefix, one block, an empty sequence": (4, 37, lambda g: _prefix_mask([37, 0, 1, 20], 37)),
    "prefix, several blocks": (3, 2100, lambda g: _prefix_mask([2100, 1025, 1024], 2100)),
    "additive window": (5, 1500, lambda g: _window_bias(5, 1500, g)),
    "per head, sparse": (2, 300, lambda g: torch.rand(2, 4, 1, 300, generator=g) > 0.97),
    "per token, batch broadcast": (3, 90, lambda g: torch.rand(1, 1, 3, 90, generator=g) > 0.9),
    "2-D [Lq, S]": (2, 50, lambda g: torch.rand(2, 50, generator=g) > 0.8),
    "key dim broadcast": (3, 40, lambda g: torch.tensor([True, False, True]).view(3, 1, 1, 1)),
    "nothing attended": (2, 64, lambda g: torch.zeros(2, 1, 1, 64, dtype=torch.bool)),
}


def _check_mask_key_range(case: str, device: torch.device) -> None:
    batch, capacity, make = MASK_RANGE_CASES[case]
    mask = make(torch.Generator().manual_seed(sum(map(ord, case))))
    expected = _expected_key_range(mask, batch, capacity)
    operand = launch.mask_as_kernel_operand(mask.to(device))
    got = launch.mask_key_range(operand, batch, capacity, mask.dtype == torch.bool)
    assert got.dtype == torch.int32 and got.shape == (2, batch)
    assert torch.equal(got.cpu(), expected), (got, expected)


@pytest.mark.parametrize("case", list(MASK_RANGE_CASES))
def test_mask_key_range_interpreted(case, interpret_kernels):
    _check_mask_key_range(case, torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("case", list(MASK_RANGE_CASES))
def test_mask_key_range_gpu(case, cuda_device):
    _check_mask_key_range(case, cuda_device)


@pytest.mark.parametrize("case", list(MASK_RANGE_CASES))
def test_mask_key_range_op_pytorch_path(case):
    """The op the backend emits once per distinct mask, through its PyTorch (CPU) path."""
    batch, capacity, make = MASK_RANGE_CASES[case]
    mask = make(torch.Generator().manual_seed(sum(map(ord, case))))
    got = torch.ops.glacompiler.mask_key_range(mask, batch, capacity)
    assert torch.equal(got, _expected_key_range(mask, batch, capacity))


def test_kv_range_is_checked(interpret_kernels):
    """kv_range (the op's hint from the backend) is checked on the kernels' path before any kernel runs."""
    from glacompiler.testing import make_decode_problem, PAPER_MEMBERS
    import dataclasses

    member = dataclasses.replace(PAPER_MEMBERS["gqa"], num_q_heads=4, num_kv_heads=2, head_dim_q=16, head_dim_k=16,
                                 head_dim_v=16)
    kw = make_decode_problem(member, batch=2, query_len=1, capacity=8, mask="bool", mask_rows="key",
                             causal=False, poison=False).kwargs
    op = torch.ops.glacompiler.attention_with_kvcache.default
    args = (kw["q"], kw["k_cache"], kw["v_cache"], None, None, None, None, kw["attn_mask"], 0.25, False, 0)
    good = torch.ops.glacompiler.mask_key_range(kw["attn_mask"], 2, 8)
    with pytest.raises(ValueError, match="kv_range must be"):
        op(*args, good[:, :1].contiguous())
    with pytest.raises(ValueError, match="needs attn_mask"):
        op(*args[:7], None, *args[8:], good)

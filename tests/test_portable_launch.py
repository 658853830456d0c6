"""The portable launcher: its step-down to fewer pipeline stages when a config does not fit the GPU's shared
memory, and the check of the backend's kv_range hint."""
import logging

import pytest
import torch
from triton.runtime.errors import OutOfResources

from glacompiler.kernels.portable import launch
from glacompiler.kernels.portable.config import PortableConfig


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
    config = PortableConfig(num_stages=3)
    with caplog.at_level(logging.WARNING, logger="glacompiler"):
        first = launch._launch_fitting(kernel, (1,), (), {"MASK_PER_ROW": True}, config, "module_a")
        second = launch._launch_fitting(kernel, (1,), (), {"MASK_PER_ROW": True}, config, "module_a")
    assert first == second == ("compiled", 1)
    assert kernel.tried == [3, 2, 1, 1]  # the second launch goes straight to the depth that fits
    assert sum("does not fit" in r.message for r in caplog.records) == 2


def test_other_specialisations_keep_their_stages():
    kernel = FakeKernel(max_stages=3)
    config = PortableConfig(num_stages=3)
    assert launch._launch_fitting(kernel, (1,), (), {"MASK_PER_ROW": False}, config, "module_b") == ("compiled", 3)
    assert kernel.tried == [3]


def test_gives_up_at_one_stage():
    kernel = FakeKernel(max_stages=0)
    with pytest.raises(OutOfResources):
        launch._launch_fitting(kernel, (1,), (), {}, PortableConfig(num_stages=2), "module_c")
    assert kernel.tried == [2, 1]


def test_kv_range_is_checked(interpret_kernels):
    """kv_range (the op's hint from the backend) is checked on the kernels' path before any kernel runs."""
    from glacompiler.problems import make_decode_problem
    from glacompiler.spec import AttentionSpec

    kw = make_decode_problem(AttentionSpec.grouped(4, 2, 16), batch=2, query_len=1, capacity=8, mask="bool", mask_rows="key",
                             causal=False, poison=False).kwargs
    op = torch.ops.glacompiler.attention_with_kvcache.default
    args = (kw["q"], kw["k_cache"], kw["v_cache"], None, None, None, None, kw["attn_mask"], 0.25, False, 0)
    good = torch.ops.glacompiler.mask_key_range(kw["attn_mask"], 2, 8)
    with pytest.raises(ValueError, match="kv_range must be"):
        op(*args, good[:, :1].contiguous())
    with pytest.raises(ValueError, match=r"kv_range must be a contiguous int32 \[3, 2\]"):
        op(*args, good[:2].contiguous())  # the range without its dense flag
    with pytest.raises(ValueError, match="needs attn_mask"):
        op(*args[:7], None, *args[8:], good)

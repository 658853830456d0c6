"""kernels/common/key_bounds.py on CPU: what KeyBoundsPlan.resolve hands a launch, and what it remembers."""
import torch

from glacompiler.kernels.common.key_bounds import KeyBoundsPlan
from glacompiler.kernels.common.mask_range import mask_as_kernel_operand


def _plan(mask, kv_range):
    return KeyBoundsPlan(mask, kv_range, None, batch=2, num_q_heads=4, query_len=1, capacity=8, causal=False,
                         device=torch.device("cpu"))


def test_the_callers_mask_is_passed_and_its_kernel_operand_is_the_jit_form():
    mask = torch.ones(1, 8, dtype=torch.bool)  # one row for every sequence: 4-D [1, 1, 1, 8] as an operand
    kv_range = torch.tensor([[0, 0], [8, 8], [1, 1]], dtype=torch.int32)
    plan = _plan(mask, kv_range)
    _, passed, *_ = plan.resolve(mask, kv_range, None)
    assert passed is mask
    (position, form), = plan.jit_forms(10).items()
    operand = form(mask)
    assert position == 10 and form is mask_as_kernel_operand
    assert operand.dtype == torch.uint8 and operand.shape == (1, 1, 1, 8) and operand.data_ptr() == mask.data_ptr()
    assert _plan(None, None).jit_forms(10) == {}


def test_each_calls_key_range_is_read():
    mask = torch.ones(2, 1, 1, 8, dtype=torch.bool)
    first = torch.tensor([[0, 1], [8, 5], [1, 0]], dtype=torch.int32)
    plan = _plan(mask, first)
    lengths, _, begin, end, dense = plan.resolve(mask, first, None)
    assert lengths is end and begin.tolist() == [0, 1] and end.tolist() == [8, 5] and dense.tolist() == [1, 0]
    second = torch.tensor([[2, 0], [6, 7], [0, 1]], dtype=torch.int32)
    _, _, begin, end, dense = plan.resolve(mask, second, None)
    assert begin.tolist() == [2, 0] and end.tolist() == [6, 7] and dense.tolist() == [0, 1]

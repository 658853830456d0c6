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
    forms = plan.jit_forms(10, 5, 6, 7, 8)
    assert forms[10] is mask_as_kernel_operand
    operand = forms[10](mask)
    assert operand.dtype == torch.uint8 and operand.shape == (1, 1, 1, 8) and operand.data_ptr() == mask.data_ptr()
    assert _plan(None, None).jit_forms(10, 5, 6, 7, 8) == {}


def _resolved(plan, mask, kv_range, positions=(5, None, 6, 7, 8)):
    """resolve's results as the JIT takes them (its forms applied), with the plan's jit_forms at these positions."""
    forms = plan.jit_forms(10, *(p for p in positions if p is not None))
    return tuple(forms[p](value) if p in forms else value
                 for p, value in zip(positions, plan.resolve(mask, kv_range, None)))


def test_the_key_range_is_passed_whole_and_its_rows_are_jit_forms():
    """The binary takes the range's address plus each row's offset: resolve passes the range itself where the
    kernel takes a row, and the JIT forms are those rows (views: the offsets are the call's metadata's)."""
    mask = torch.ones(2, 1, 1, 8, dtype=torch.bool)
    kv_range = torch.tensor([[0, 1], [8, 5], [1, 0]], dtype=torch.int32)
    plan = _plan(mask, kv_range)
    lengths, _, begin, end, dense = plan.resolve(mask, kv_range, None)
    assert lengths is begin is end is dense is kv_range
    forms = plan.jit_forms(10, 5, 6, 7, 8)
    for position, row in ((5, 1), (6, 0), (7, 1), (8, 2)):
        view = forms[position](kv_range)
        assert view.data_ptr() == kv_range[row].data_ptr() and torch.equal(view, kv_range[row])
    assert 8 not in plan.jit_forms(10, 5, 6, 7)  # a kernel without the dense flag (the Hopper latent one)


def test_lengths_keep_their_own_tensor_unless_they_are_the_ranges_end():
    mask = torch.ones(2, 1, 1, 8, dtype=torch.bool)
    kv_range = torch.tensor([[0, 1], [8, 5], [1, 0]], dtype=torch.int32)
    lengths = torch.tensor([8, 6], dtype=torch.int32)
    given = KeyBoundsPlan(mask, kv_range, lengths, batch=2, num_q_heads=4, query_len=1, capacity=8, causal=False,
                          device=torch.device("cpu"))
    capacity = KeyBoundsPlan(mask, kv_range, None, batch=2, num_q_heads=4, query_len=2, capacity=8, causal=True,
                             device=torch.device("cpu"))  # causal Lq > 1: queries placed by the capacity
    for plan, expected in ((given, lengths), (capacity, torch.tensor([8, 8], dtype=torch.int32))):
        resolved = plan.resolve(mask, kv_range, lengths if plan is given else None)
        assert 5 not in plan.jit_forms(10, 5, 6, 7, 8) and torch.equal(resolved[0], expected)


def test_traced_the_key_range_rows_are_passed():
    from glacompiler.kernels.common.triton_launch import traced_launches

    mask = torch.ones(2, 1, 1, 8, dtype=torch.bool)
    kv_range = torch.tensor([[0, 1], [8, 5], [1, 0]], dtype=torch.int32)
    with traced_launches():
        lengths, _, begin, end, dense = _plan(mask, kv_range).resolve(mask, kv_range, None)
    assert lengths is end and begin.tolist() == [0, 1] and end.tolist() == [8, 5] and dense.tolist() == [1, 0]


def test_each_calls_key_range_is_read():
    mask = torch.ones(2, 1, 1, 8, dtype=torch.bool)
    first = torch.tensor([[0, 1], [8, 5], [1, 0]], dtype=torch.int32)
    plan = _plan(mask, first)
    lengths, _, begin, end, dense = _resolved(plan, mask, first)
    assert torch.equal(lengths, end) and begin.tolist() == [0, 1] and end.tolist() == [8, 5] and dense.tolist() == [1, 0]
    second = torch.tensor([[2, 0], [6, 7], [0, 1]], dtype=torch.int32)
    _, _, begin, end, dense = _resolved(plan, mask, second)
    assert begin.tolist() == [2, 0] and end.tolist() == [6, 7] and dense.tolist() == [0, 1]

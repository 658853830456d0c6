"""The mask's key range (kernels/common/mask_range.py): the kernel under the interpreter and on a GPU, and the
op's CPU path, each against the PyTorch reference beside it."""
import pytest
import torch

from glacompiler.kernels.common.mask_range import mask_as_kernel_operand
from glacompiler.memo import BoundedMemo
from glacompiler.kernels.common.mask_range import mask_key_range, mask_key_range_reference


def _expected_key_range(mask: torch.Tensor, batch: int, capacity: int) -> torch.Tensor:
    return mask_key_range_reference(mask_as_kernel_operand(mask), batch, capacity, mask.dtype == torch.bool)


def test_reference_on_a_hand_made_case():
    # Sequence 0 attends to keys 2..4 in one head and 7 in another; sequence 1 to nothing.
    mask = torch.zeros(2, 2, 1, 9, dtype=torch.bool)
    mask[0, 0, 0, 2:5] = True
    mask[0, 1, 0, 7] = True
    assert _expected_key_range(mask, 2, 9).tolist() == [[2, 9], [8, 0], [0, 0]]


def test_reference_dense_flag_on_hand_made_cases():
    """Row 2: 1 where every row allows every key of [first, last) and an additive mask adds 0 there."""
    prefix = _prefix_mask([5, 0, 9], 9)  # full prefixes, one empty sequence
    assert _expected_key_range(prefix, 3, 9).tolist() == [[0, 9, 0], [5, 0, 9], [1, 0, 1]]
    left_padded = torch.zeros(2, 1, 1, 9, dtype=torch.bool)
    left_padded[0, ..., 3:7] = True
    left_padded[1, ..., 3:7] = True
    left_padded[1, ..., 5] = False  # a hole inside the range
    assert _expected_key_range(left_padded, 2, 9)[2].tolist() == [1, 0]
    heads = torch.zeros(1, 2, 1, 9, dtype=torch.bool)
    heads[0, 0, 0, :6] = True
    heads[0, 1, 0, :4] = True  # another head stops earlier: not dense over the union
    assert _expected_key_range(heads, 1, 9).tolist() == [[0], [6], [0]]
    causal = torch.ones(1, 1, 2, 9, dtype=torch.bool)
    causal[0, 0, 0, 8] = False  # draft token 0 does not see the last key
    assert _expected_key_range(causal, 1, 9)[2].tolist() == [0]
    zeros = torch.zeros(2, 1, 1, 9)
    zeros[:, ..., 7:] = float("-inf")
    biased = zeros.clone()
    biased[1, ..., 2] = 0.5  # adds something inside the range
    assert _expected_key_range(zeros, 2, 9)[2].tolist() == [1, 1]
    assert _expected_key_range(biased, 2, 9)[2].tolist() == [1, 0]


@pytest.mark.parametrize("dtype, fill", [(torch.float32, torch.finfo(torch.float32).min),
                                         (torch.bfloat16, torch.finfo(torch.bfloat16).min),
                                         (torch.bfloat16, -65536.0), (torch.float16, torch.finfo(torch.float16).min)])
def test_reference_masked_fill_excludes_like_minus_inf(dtype, fill):
    """The fills models write for a masked key (their dtype's lowest; bf16's -65536 as one graph gave it) leave the
    key out of the range, but in a row with nothing else to attend to (whose softmax is over those entries): then
    the sequence keeps the whole capacity."""
    prefix = torch.zeros(2, 1, 1, 9, dtype=dtype)
    prefix[0, ..., 7:] = fill
    prefix[1, ..., 3:] = fill
    prefix[1, ..., 5] = float("-inf")
    assert _expected_key_range(prefix, 2, 9).tolist() == [[0, 0], [7, 3], [1, 1]]
    one_head_all_masked = torch.zeros(2, 2, 1, 9, dtype=dtype)
    one_head_all_masked[:, 0, :, 4:] = fill
    one_head_all_masked[0, 1, :, :] = fill  # sequence 0's second head: nothing but fills
    one_head_all_masked[1, 1, :, 6:] = float("-inf")
    assert _expected_key_range(one_head_all_masked, 2, 9).tolist() == [[0, 0], [9, 6], [0, 0]]
    fill_and_minus_inf = torch.full((1, 1, 1, 9), float("-inf"), dtype=dtype)
    fill_and_minus_inf[..., 2] = fill
    assert _expected_key_range(fill_and_minus_inf, 1, 9).tolist() == [[0], [9], [0]]
    all_minus_inf = torch.full((1, 1, 1, 9), float("-inf"), dtype=dtype)
    assert _expected_key_range(all_minus_inf, 1, 9).tolist() == [[9], [0], [0]]  # as before: nothing attended


def test_reference_keeps_large_biases_above_the_masked_fill():
    """A bias above -65504 is a bias (a large enough score gap overcomes it): in the range, and read."""
    biased = torch.zeros(1, 1, 1, 9)
    biased[..., 7:] = -65000.0
    assert _expected_key_range(biased, 1, 9).tolist() == [[0], [9], [0]]


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
    "left-padded runs, dense": (3, 1100, lambda g: _prefix_mask([1100, 700, 30], 1100) & ~_prefix_mask([0, 5, 29], 1100)),
    "prefix in every head, dense": (2, 80, lambda g: _prefix_mask([80, 33], 80).expand(2, 3, 1, 80)),
    "additive zeros in range, dense": (3, 300, lambda g: torch.where(_prefix_mask([300, 1, 120], 300), 0.0,
                                                                      float("-inf"))),
    "transformers' bf16 prefix (finfo.min tail), dense": (
        3, 1100, lambda g: torch.zeros(3, 1, 1, 1100, dtype=torch.bfloat16).masked_fill(
            ~_prefix_mask([1100, 1030, 1], 1100), torch.finfo(torch.bfloat16).min)),
    "fp32 lowest-only head keeps the whole range": (2, 200, lambda g: torch.where(
        torch.tensor([[True], [False]]).view(2, 1, 1, 1) | (torch.rand(2, 3, 2, 200, generator=g) > 0.5),
        torch.finfo(torch.float32).min, torch.randn(2, 3, 2, 200, generator=g))),
    "fp16 lowest out of range, -60000 in": (2, 90, lambda g: torch.zeros(2, 1, 1, 90, dtype=torch.float16).masked_fill(
        ~_prefix_mask([40, 90], 90), torch.finfo(torch.float16).min).masked_fill(~_prefix_mask([90, 70], 90), -6e4)),
    "bf16 -65536 tail (a compiled transformers graph's fill)": (
        2, 300, lambda g: torch.zeros(2, 1, 1, 300, dtype=torch.bfloat16).masked_fill(
            ~_prefix_mask([299, 3], 300), -65536.0)),
    "causal draft tokens, not dense": (2, 70, lambda g: _prefix_mask([69, 70], 70)
                                       | (torch.arange(2) == 1).view(1, 1, 2, 1)),
}


def _check_mask_key_range(case: str, device: torch.device) -> None:
    batch, capacity, make = MASK_RANGE_CASES[case]
    mask = make(torch.Generator().manual_seed(sum(map(ord, case))))
    expected = _expected_key_range(mask, batch, capacity)
    operand = mask_as_kernel_operand(mask.to(device))
    got = mask_key_range(operand, batch, capacity, mask.dtype == torch.bool)
    assert got.dtype == torch.int32 and got.shape == (3, batch)
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




def test_a_repeat_reuses_the_prepared_launch_on_fresh_masks(interpret_kernels, monkeypatch):
    from glacompiler.kernels.common import mask_range

    monkeypatch.setattr(mask_range, "_prepared_ranges", BoundedMemo(2))
    generator = torch.Generator().manual_seed(3)
    for step in range(3):  # fresh masks, one metadata: one prepared launch, right ranges every time
        mask = _window_bias(3, 70, generator)
        got = mask_key_range(mask_as_kernel_operand(mask), 3, 70, False)
        assert torch.equal(got, _expected_key_range(mask, 3, 70))
        assert len(mask_range._prepared_ranges) == 1
    for capacity in (71, 72, 73):  # new metadata each: bounded
        mask = _window_bias(3, capacity, generator)
        assert torch.equal(mask_key_range(mask_as_kernel_operand(mask), 3, capacity, False),
                           _expected_key_range(mask, 3, capacity))
        assert len(mask_range._prepared_ranges) <= 2

"""The split kernels' targets (kernels/common/split_buffers.py): fp32 partial outputs and LSEs (the op's outputs
themselves with one split), and the check a compiled graph's buffers pass before the kernels write them."""
import pytest
import torch

from glacompiler.kernels.common.split_buffers import SplitBuffers


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_partials_and_lses_are_fp32_whatever_the_output_dtype(dtype, interpret_kernels):
    # (interpret_kernels: several splits make the combine's launch, which loads triton)
    q = torch.randn(2, 3, 8, 64).to(dtype)
    buffers = SplitBuffers(q, 96, num_splits=4)
    split_out, split_lse, out, lse = buffers.allocate(q)
    assert split_out.shape == (2, 3, 8, 4, 96) and split_out.dtype == torch.float32 and out.dtype == dtype
    assert split_lse.shape == (2, 3, 8, 4) and split_lse.dtype == torch.float32 == lse.dtype
    assert out.shape == (2, 3, 8, 96) and lse.shape == (2, 3, 8)
    assert split_out.stride()[:4] == buffers.out_strides and split_lse.stride() == buffers.lse_strides
    assert buffers.are_targets(q, split_out, split_lse)
    assert not buffers.are_targets(q, split_out.to(torch.bfloat16), split_lse)  # its kernels store fp32
    assert not buffers.are_targets(q, split_out, split_lse.to(torch.float64))


def test_one_split_writes_the_outputs():
    q = torch.randn(2, 1, 8, 64, dtype=torch.bfloat16)
    buffers = SplitBuffers(q, 64, num_splits=1)
    split_out, split_lse, out, lse = buffers.allocate(q)
    assert split_out is out and split_lse is lse and out.dtype == torch.bfloat16 and lse.dtype == torch.float32
    assert buffers.are_targets(q, out, lse) and buffers.combine_launch is None

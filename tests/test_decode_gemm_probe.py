"""benchmarks/decode_gemm_probe.py's split-K kernel computes x @ w^T: under the interpreter (fp16 and fp32; the
interpreter's bf16 dot is wrong) and on the GPU (bf16), against a float64 product with FlashAttention's rule (error at
most 2x PyTorch's in the same precision, plus one rounding step). Odd sizes leave partial row, column and key blocks;
split counts leave splits of unequal length; a kernel object called again must give the same bits (the count it
shares between launches is left at 0 by each)."""
import pathlib
import sys

import pytest
import torch
import torch.nn.functional as F

from glacompiler.problems import max_error

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import decode_gemm_probe  # noqa: E402
from decode_gemm_probe import GemmConfig, SplitKLinear, configs_for, split_k_linear  # noqa: E402

# (M, K, N): a full block of each, and odd sizes (partial rows, columns and key blocks)
SHAPES = ((16, 64, 32), (5, 80, 40), (3, 200, 17))


def assert_matches(x, weight, out):
    reference = x.double() @ weight.double().t()
    error, torch_error = max_error(out, reference), max_error(F.linear(x, weight), reference)
    rounding = reference.abs().max().item() * torch.finfo(x.dtype).eps
    assert error <= 2 * torch_error + rounding, (error, torch_error)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("split_k", [1, 2, 3])
def test_split_k_linear_in_the_interpreter(interpret_kernels, dtype, shape, split_k):
    rows, width, columns = shape
    generator = torch.Generator().manual_seed(rows * width + split_k)
    x = torch.randn(rows, width, generator=generator).to(dtype)
    weight = (torch.randn(columns, width, generator=generator) / width ** 0.5).to(dtype)
    config = GemmConfig(block_n=16, block_k=32, split_k=split_k)
    assert_matches(x, weight, split_k_linear(x, weight, config))


def test_count_is_left_at_zero_and_calls_repeat_bit_for_bit(interpret_kernels):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(5, 96, generator=generator).half()
    weight = torch.randn(40, 96, generator=generator).half()
    gemm = SplitKLinear(5, 96, 40, GemmConfig(block_n=16, block_k=32, split_k=3), x.device)
    first = gemm(x, weight, torch.empty(5, 40, dtype=x.dtype))
    assert torch.equal(gemm.counts, torch.zeros_like(gemm.counts))
    second = gemm(x, weight, torch.full((5, 40), float("nan"), dtype=x.dtype))
    assert torch.equal(first, second)
    assert_matches(x, weight, second)


def test_split_counts_cover_the_keys_once():
    """Each config's splits take at least one key block each and every block once; no split length twice."""
    grid = {"block_n": [64], "block_k": [128], "num_warps": [4], "num_stages": [3]}
    for width in (64, 2048, 6304, 8192):
        lengths = []
        for config in configs_for(width, grid):
            blocks = -(-width // config.block_k)
            per_split = -(-blocks // config.split_k)
            assert (config.split_k - 1) * per_split < blocks <= config.split_k * per_split, (width, config)
            lengths.append(per_split)
        assert lengths and len(lengths) == len(set(lengths)), (width, lengths)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="config"):
        SplitKLinear(4, 64, 32, GemmConfig(block_n=16, block_k=32, split_k=0), torch.device("cpu"))


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(64, 2048, 3072), (64, 6304, 2048), (7, 1000, 333)])
@pytest.mark.parametrize("split_k", [1, 4, 16])
def test_split_k_linear_on_the_gpu_in_bf16(cuda_device, shape, split_k):
    rows, width, columns = shape
    generator = torch.Generator(device=cuda_device).manual_seed(width + split_k)
    x = torch.randn(rows, width, device=cuda_device, dtype=torch.bfloat16, generator=generator)
    weight = torch.randn(columns, width, device=cuda_device, dtype=torch.bfloat16, generator=generator) / width ** 0.5
    gemm = SplitKLinear(rows, width, columns, GemmConfig(block_n=64, block_k=128, split_k=split_k, num_stages=4),
                        cuda_device)
    first = gemm(x, weight, torch.empty(rows, columns, device=cuda_device, dtype=x.dtype))
    second = gemm(x, weight, torch.full((rows, columns), float("nan"), device=cuda_device, dtype=x.dtype))
    assert torch.equal(first, second)
    assert torch.equal(gemm.counts, torch.zeros_like(gemm.counts))
    assert_matches(x, weight, second)


@pytest.mark.gpu
def test_split_k_linear_replayed_in_a_graph_bit_for_bit(cuda_device):
    """Many launches sharing one count, back to back in a CUDA graph replayed many times: a last program that read a
    partial before its split's stores landed, or a count not set back, would change some output's bits."""
    rows, width, columns = 64, 4096, 4096  # 64 column blocks x 16 splits: 1024 programs a launch
    generator = torch.Generator(device=cuda_device).manual_seed(11)
    x = torch.randn(rows, width, device=cuda_device, dtype=torch.bfloat16, generator=generator)
    weight = torch.randn(columns, width, device=cuda_device, dtype=torch.bfloat16, generator=generator) / width ** 0.5
    gemm = SplitKLinear(rows, width, columns, GemmConfig(block_n=64, block_k=128, split_k=16, num_stages=4),
                        cuda_device)
    expected = split_k_linear(x, weight, gemm.config)
    outs = [torch.empty_like(expected) for _ in range(64)]
    gemm(x, weight, outs[0])  # compiled before the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for out in outs:
            gemm(x, weight, out)
    for _ in range(20):
        for out in outs:
            out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(out, expected) for out in outs)
    assert torch.equal(gemm.counts, torch.zeros_like(gemm.counts))
    assert_matches(x, weight, expected)


def test_the_script_refuses_a_machine_without_a_gpu(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU machine's message")
    monkeypatch.setattr(sys, "argv", ["decode_gemm_probe.py"])
    with pytest.raises(SystemExit, match="CUDA"):
        decode_gemm_probe.main()

"""The model of test_compile_cache.py, compiled in that test's process and in fresh ones: one attention site
the pass rewrites (GQA through SDPA) and one it skips with a reason (a softmax over the heads)."""
import math

import torch
import torch.nn.functional as F


def two_sites(q, k, v, x):
    rewritten = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    skipped = ((x @ x.transpose(-1, -2)) / math.sqrt(x.shape[-1])).softmax(dim=1) @ x
    return rewritten, skipped


def model_inputs(device="cpu", dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    shapes = ((2, 8, 1, 16), (2, 2, 24, 16), (2, 2, 24, 16), (2, 4, 3, 16))
    return [torch.randn(*shape, generator=generator).to(device=device, dtype=dtype) for shape in shapes]

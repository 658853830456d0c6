"""The tiny decode models the frozen-graph pass tests compile (tests/test_concat_projections.py,
tests/test_align_projections.py), the step they take and the Inductor settings that freeze them on CPU."""
import dataclasses
from typing import Optional

import torch

from glacompiler.demo import install_plain_decode
from glacompiler.models import TinyLM
from glacompiler.presets import tiny_config

# cpp.weight_prepack off: on CPU, freezing would turn every Linear into a oneDNN call before the post-grad passes.
FROZEN = {"freezing": True, "cpp.weight_prepack": False}

STEP = (torch.tensor([[3], [7]]), torch.tensor([40, 64], dtype=torch.int32))  # tokens, lengths


def tiny_model(variant: str, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
               ffn_dim: Optional[int] = None) -> TinyLM:
    """A tiny model of the package (its MLP `ffn_dim` wide where given) with its plain-PyTorch decode over a filled
    cache (what bench_backend.py compiles)."""
    torch.manual_seed(seed)
    config = tiny_config(variant, n_layers=2)
    if ffn_dim is not None:
        config = dataclasses.replace(config, ffn_dim=ffn_dim)
    model = TinyLM(config).eval().to(device, dtype)
    model.setup_cache(2, 64)
    for cache in model.caches:
        for tensor in cache.tensors():
            tensor.copy_(torch.randn(tensor.shape))  # (drawn on the CPU: the same data on any device, in any dtype)
    return install_plain_decode(model)

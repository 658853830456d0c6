"""The GPU a call's kernels launch on. Triton launches on the current CUDA device and its current stream, whatever
device the tensors are on, so a call whose tensors are on another GPU (a model spread over GPUs in one process)
would run on the wrong one: it runs under torch.cuda.device of its tensors instead, as FlashAttention's device guard
does. The common case, tensors on the current device, pays one comparison. Launches traced into a graph, and
attention_into's (a compiled graph's), need none: the graph's own code enters its device."""
from __future__ import annotations

import torch
from torch import Tensor

from .triton_launch import tracing_launches


def other_cuda_device(tensor: Tensor) -> int:
    """The tensor's CUDA device index where it is not the current device, else -1 (the current one, not CUDA, or a
    launch being traced)."""
    index = tensor.get_device()
    # (torch.cuda's C call without its Python frame, which runs on every call; a CUDA tensor means a CUDA build)
    if index < 0 or tracing_launches() or index == torch._C._cuda_getDevice():
        return -1
    return index

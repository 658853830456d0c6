"""GEMMs over frozen weights padded to aligned widths, under Inductor's freezing: an MLP of the paper's widths.

cuBLAS reads and writes a matrix with 16-byte vectors only where its row pitch is a multiple of 16 bytes. The
paper's models match parameter counts with MLP widths such as 6638 (GTA-4) and 6292 (GLA-2): their gate, up and down
GEMMs got sm80 CUTLASS kernels of 2-element alignment on an H200, about 15 us each for a 27 MB weight at a decode
batch, where aligned ones stream near the copy rate (benchmarks/RESULTS.md). Inductor's own padding (pad_mm) leaves
memory-bound GEMMs alone: padding a weight every step would cost more than it saves. A frozen weight is padded once,
at compile time:

- an output width N off alignment: the weight (and bias) get zero columns up to the aligned width, and the product
  is sliced back to N (a pointwise consumer reads the slice in place; an extern one gets a copy);
- an input width K off alignment: the weight gets zero rows and the input zero columns, a pad that Inductor fuses
  into the kernel producing the input (SwiGLU's product for the down projection).

The result is exact (the padding adds zeros). The padded weight is held beside the model's (as a concatenated one
is); one this package made (concat_projections.py's) is replaced. Only CUDA GEMMs are padded; without freezing the
weights are graph inputs and nothing changes.
"""
from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import fx

from .frozen_weights import aten, attribute, drop_if_unused, frozen_projection, gemm_over_constant, static_fake
from .graph_pass import strict_mode

LOGGER = logging.getLogger("glacompiler")

ALIGNMENT_BYTES = 16  # cuBLAS's widest vector access
PADDED_DEVICE_TYPES = ("cuda",)


def aligned(width: int, dtype: torch.dtype) -> int:
    step = max(1, ALIGNMENT_BYTES // dtype.itemsize)
    return -(-width // step) * step


def padded_weight(weight: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """[K, N] -> [rows, columns] with zeros appended, in the layout the weight has: nn.Linear's [N, K] row-major seen
    transposed (cuBLAS's fastest form for a decode GEMM), or [K, N] row-major."""
    pad_rows, pad_columns = rows - weight.shape[0], columns - weight.shape[1]
    if weight.t().is_contiguous():
        return F.pad(weight.t(), (0, pad_rows, 0, pad_columns)).t()
    return F.pad(weight.contiguous(), (0, pad_columns, 0, pad_rows))


def _pad(graph: fx.Graph, node: fx.Node, projection: tuple) -> None:
    """Pad one GEMM; every value is made before the graph changes: an error leaves it as it was."""
    inp, weight, bias = projection
    module = graph.owning_module
    value = attribute(module, weight.target)
    (k, n), dtype = value.shape, value.dtype
    k_aligned, n_aligned = aligned(k, dtype), aligned(n, dtype)
    new_weight = padded_weight(value, k_aligned, n_aligned)
    new_bias = None if bias is None else F.pad(attribute(module, bias.target), (0, n_aligned - n))
    fake_mode = node.meta["val"].fake_mode
    fake_weight = static_fake(fake_mode, new_weight)
    fake_bias = None if new_bias is None else static_fake(fake_mode, new_bias)
    with fake_mode:
        fake_input = inp.meta["val"]
        if k_aligned != k:
            fake_input = aten.constant_pad_nd.default(fake_input, [0, k_aligned - k], 0.0)
        if new_bias is None:
            fake_product = aten.mm.default(fake_input, fake_weight)
        else:
            fake_product = aten.addmm.default(fake_bias, fake_input, fake_weight)
        fake_slice = aten.slice.Tensor(fake_product, 1, 0, n)
        fake_output = aten.clone.default(fake_slice, memory_format=torch.contiguous_format)
    with graph.inserting_before(node):
        padded_input = inp
        if k_aligned != k:
            padded_input = graph.call_function(aten.constant_pad_nd.default, (inp, [0, k_aligned - k], 0.0))
            padded_input.meta["val"] = fake_input
        output = product = gemm_over_constant(graph, padded_input, new_weight, new_bias,
                                              (fake_weight, fake_bias, fake_product), "aligned")
        if n_aligned != n:
            sliced = graph.call_function(aten.slice.Tensor, (product, 1, 0, n))
            sliced.meta["val"] = fake_slice
            # (contiguous again: the nodes after it keep the strides their meta values were traced with)
            output = graph.call_function(aten.clone.default, (sliced,), {"memory_format": torch.contiguous_format})
            output.meta["val"] = fake_output
    node.replace_all_uses_with(output)
    graph.erase_node(node)
    for old in (weight, bias):
        if old is not None:
            drop_if_unused(graph, old)


def align_projections(graph: fx.Graph) -> int:
    """Pad every CUDA GEMM over a frozen weight whose input or output width is off alignment; returns how many."""
    if graph.owning_module is None:
        return 0
    padded = 0
    for node in list(graph.nodes):
        projection = frozen_projection(node)
        if projection is None:
            continue
        value = projection[1].meta["val"]
        k, n = value.shape
        if (value.device.type not in PADDED_DEVICE_TYPES or not value.dtype.is_floating_point
                or (aligned(k, value.dtype), aligned(n, value.dtype)) == (k, n)):
            continue
        try:
            _pad(graph, node, projection)
        except Exception as error:  # (a GEMM this pass cannot pad stays as it was: the compile goes on)
            if strict_mode():
                raise
            LOGGER.warning("glacompiler: GEMM %s left unpadded (%r)", node.name, error)
            continue
        padded += 1
    return padded

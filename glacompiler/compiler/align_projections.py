"""GEMMs over frozen weights padded to aligned widths, under Inductor's freezing: an MLP of the paper's widths.

cuBLAS reads and writes a matrix with 16-byte vectors only where its row pitch is a multiple of 16 bytes. The
paper's models match parameter counts with MLP widths such as 6638 (GTA-4) and 6292 (GLA-2): at a decode batch their
gate, up and down GEMMs ran on sm80 CUTLASS kernels of 2-element alignment on an H200, 1.5-1.8x the time of the same
GEMMs padded (benchmarks/RESULTS.md, "Frozen GEMMs of odd widths"). Inductor's own padding (pad_mm) leaves
memory-bound GEMMs alone: padding a weight every step would cost more than it saves. A frozen weight is padded once,
at compile time:

- an output width N off alignment: the weight (and bias) get zero columns up to the aligned width, and the product
  is sliced back to N and made contiguous again (Inductor reads it in place where its consumer is a kernel Inductor
  generates; a graph output or an extern consumer gets a copy);
- an input width K off alignment: the weight gets zero rows and the input zero columns, a pad that Inductor fuses
  into the kernel producing the input where that is one Inductor generates (SwiGLU's product for the down
  projection), else a copy.

Those copies are why only GEMMs of at most min(K, N) rows are padded (decode batches, not prefill): a copy then moves
at most the weight's bytes. The result is exact (the padding adds zeros). A weight that several GEMMs share is padded
once, and an input that several share is padded once; the padded weight is held beside the model's (as a
concatenated one is), and one this package made (concat_projections.py's) is replaced. Only CUDA GEMMs are padded;
without freezing the weights are graph inputs and nothing changes.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F
from torch import fx

from .frozen_weights import (aten, attribute, drop_if_unused, fake_gemm, frozen_projection, gemm, hold_constant,
                             static_fake)
from .graph_pass import strict_mode

LOGGER = logging.getLogger("glacompiler")

ALIGNMENT_BYTES = 16  # cuBLAS's widest vector access
PADDED_DEVICE_TYPES = ("cuda",)


def aligned_width(width: int, dtype: torch.dtype, alignment_bytes: int = ALIGNMENT_BYTES) -> int:
    step = max(1, alignment_bytes // dtype.itemsize)
    return -(-width // step) * step


def padded_weight(weight: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """[K, N] -> [rows, columns] with zeros appended, in the layout the weight has: nn.Linear's [N, K] row-major seen
    transposed (cuBLAS's fastest form for a decode GEMM), or [K, N] row-major."""
    pad_rows, pad_columns = rows - weight.shape[0], columns - weight.shape[1]
    if weight.t().is_contiguous():
        return F.pad(weight.t(), (0, pad_rows, 0, pad_columns)).t()
    return F.pad(weight.contiguous(), (0, pad_columns, 0, pad_rows))


def _rows(inp: fx.Node) -> Optional[int]:
    """The GEMM's row count, or its size hint where it is symbolic (None where there is none)."""
    rows = inp.meta["val"].shape[0]
    return rows if isinstance(rows, int) else getattr(rows.node, "hint", None)


class _Padding:
    """Pads the GEMMs of one graph, remembering what it made: a padded weight (and bias) per frozen weight, a padded
    input per input node."""

    def __init__(self, graph: fx.Graph):
        self.graph = graph
        self.constants: dict = {}  # (weight target, bias target or None) -> (weight node, bias node or None)
        self.inputs: dict = {}  # (input node, aligned width) -> its pad node

    def pad(self, node: fx.Node, projection: tuple) -> None:
        """Pad one GEMM; every value is made before the graph changes: an error leaves it as it was."""
        graph, (inp, weight, bias) = self.graph, projection
        value = weight.meta["val"]
        (k, n), dtype = value.shape, value.dtype
        k_aligned, n_aligned = aligned_width(k, dtype), aligned_width(n, dtype)
        key = (weight.target, None if bias is None else bias.target)
        held = self.constants.get(key)
        if held is None:
            module, fake_mode = graph.owning_module, node.meta["val"].fake_mode
            new_weight = padded_weight(attribute(module, weight.target), k_aligned, n_aligned)
            new_bias = None if bias is None else attribute(module, bias.target)
            if new_bias is not None and n_aligned != n:
                new_bias = F.pad(new_bias, (0, n_aligned - n))
            fake_weight = static_fake(fake_mode, new_weight)
            fake_bias = None if new_bias is None else static_fake(fake_mode, new_bias)
        else:
            fake_weight, fake_bias = (None if held_node is None else held_node.meta["val"] for held_node in held)
        padded_input = inp if k_aligned == k else self.inputs.get((inp, k_aligned))
        if padded_input is None:
            with inp.meta["val"].fake_mode:
                fake_input = aten.constant_pad_nd.default(inp.meta["val"], [0, k_aligned - k], 0.0)
        else:
            fake_input = padded_input.meta["val"]
        fake_product = fake_gemm(fake_input, fake_weight, fake_bias)
        if n_aligned != n:
            with fake_product.fake_mode:
                fake_slice = aten.slice.Tensor(fake_product, 1, 0, n)
                fake_output = aten.clone.default(fake_slice, memory_format=torch.contiguous_format)
        with graph.inserting_before(node):
            if held is None:
                held = (hold_constant(graph, new_weight, fake_weight, "aligned"),
                        None if new_bias is None else hold_constant(graph, new_bias, fake_bias, "aligned"))
                self.constants[key] = held
            if padded_input is None:
                padded_input = graph.call_function(aten.constant_pad_nd.default, (inp, [0, k_aligned - k], 0.0))
                padded_input.meta["val"] = fake_input
                self.inputs[(inp, k_aligned)] = padded_input
            output = product = gemm(graph, padded_input, *held, fake_product)
            if n_aligned != n:
                sliced = graph.call_function(aten.slice.Tensor, (product, 1, 0, n))
                sliced.meta["val"] = fake_slice
                # (contiguous again, as the GEMM's product was: a graph output keeps its strides, an extern consumer
                # gets the layout it was traced with, and the nodes after it keep their meta values)
                output = graph.call_function(aten.clone.default, (sliced,), {"memory_format": torch.contiguous_format})
                output.meta["val"] = fake_output
        node.replace_all_uses_with(output)
        graph.erase_node(node)
        for old in (weight, bias):
            if old is not None:
                drop_if_unused(graph, old)


def _needs_padding(projection: tuple) -> bool:
    inp, weight, _ = projection
    value = weight.meta["val"]
    k, n = value.shape
    if value.device.type not in PADDED_DEVICE_TYPES or not value.dtype.is_floating_point:
        return False
    if (aligned_width(k, value.dtype), aligned_width(n, value.dtype)) == (k, n):
        return False
    rows = _rows(inp)
    return rows is not None and rows <= min(k, n)  # (a pad's copies move at most the weight's bytes)


def align_projections(graph: fx.Graph) -> int:
    """Pad every CUDA GEMM of at most min(K, N) rows over a frozen weight whose input or output width K or N is off
    alignment; returns how many."""
    if graph.owning_module is None:
        return 0
    padding = _Padding(graph)
    padded = 0
    for node in list(graph.nodes):
        projection = frozen_projection(node)
        if projection is None or not _needs_padding(projection):
            continue
        try:
            padding.pad(node, projection)
        except Exception as error:  # (a GEMM this pass cannot pad stays as it was: the compile goes on)
            if strict_mode():
                raise
            LOGGER.warning("glacompiler: GEMM %s left unpadded (%r)", node.name, error)
            continue
        padded += 1
    return padded

"""Projections of one input into one GEMM, under Inductor's freezing: a decode step's q, k and v projections.

At decode batch sizes a projection GEMM reads its weight once for a handful of rows: the k and v projections of a
GQA model (2048 x 512 in a Llama-3.2-1B-shaped model) take 5.5 us each on an H200 for a 2 MB weight, mostly fixed
cost (benchmarks/RESULTS.md, "the decode step's GEMMs"). With the weights frozen into constants, Inductor's freezing
concatenates GEMMs that share their input, but torch 2.11 only where the weights have the same shape (gate and up,
never q with k and v of GQA); torch 2.13 asks only for the same input width. This pass, run after freezing, does
that on any torch: mm / addmm nodes of one input whose weights (and biases) are frozen constants of the same input
width, dtype and device become one GEMM over the weights concatenated at compile time, split back into the
original outputs. The concatenated copy is held beside the model's weights, as Inductor's own concatenation's is
(Inductor's freezing_discard_parameters frees the model's), and a group's outputs are all made where its first
GEMM was (projections of one input far apart in the graph are held from there). Without freezing the weights are
graph inputs and nothing changes (concatenating them would copy them every step).

Inductor's pad_mm (a joint-graph pass, before this one) may pad a GEMM's rows to an aligned count (a decode batch of
2 to 8) and slice them off its product again. It decides per GEMM, by timing where it deems the GEMM compute-bound,
so one projection of a group can come padded and its neighbours not. Such a projection still reads the same input:
it joins its group, and its sliced product is the group's part.
"""
from __future__ import annotations

import logging
import operator
from typing import Optional

import torch
from torch import fx

from .frozen_weights import aten, attribute, fake_gemm, frozen_projection, gemm, hold_constant, static_fake
from .graph_pass import strict_mode

LOGGER = logging.getLogger("glacompiler")


def _concatenated_weight(weights: list) -> torch.Tensor:
    """[K, sum N]: stored as the weights are, row-major [N, K] transposed (nn.Linear's), or as [K, N]."""
    if all(w.t().is_contiguous() for w in weights):
        return torch.cat([w.t() for w in weights]).t()
    return torch.cat(weights, dim=1)


_SLICE_DEFAULTS = (0, None, None, 1)  # aten.slice.Tensor's dim, start, end, step


def _row_padding_source(node: fx.Node, inp: fx.Node) -> Optional[fx.Node]:
    """x where `inp` pads x's rows at the bottom only (pad_mm's constant_pad_nd(x, [0, 0, 0, p])) and every user of the
    GEMM `node` slices its product back to x's rows: the rows used are those of the GEMM over x. Else None."""
    if inp.op != "call_function" or inp.target is not aten.constant_pad_nd.default or inp.kwargs:
        return None
    source, pad = inp.args[0], list(inp.args[1])
    if not (isinstance(source, fx.Node) and len(pad) == 4 and pad[:3] == [0, 0, 0] and node.users):
        return None
    value = source.meta.get("val")
    if not (isinstance(value, torch.Tensor) and value.dim() == 2 and isinstance(value.shape[0], int)):
        return None  # (pad_mm pads static sizes only)
    for user in node.users:
        if user.target is not aten.slice.Tensor or user.kwargs or user.args[0] is not node:
            return None
        dim, start, _, step = tuple(user.args[1:]) + _SLICE_DEFAULTS[len(user.args) - 1:]
        sliced = user.meta.get("val")
        if (dim != 0 or start not in (0, None) or step != 1 or not isinstance(sliced, torch.Tensor)
                or sliced.shape[0] != value.shape[0]):
            return None
    return source


def _group_input(node: fx.Node, inp: fx.Node) -> fx.Node:
    """The input a GEMM `node` of input `inp` is grouped by: x where `inp` is pad_mm's row padding of x
    (_row_padding_source), else `inp`."""
    return _row_padding_source(node, inp) or inp


def _fuse(graph: fx.Graph, module: torch.nn.Module, nodes: list, projections: list, source: fx.Node) -> None:
    """One GEMM for `nodes` (mm or addmm of `source`, in graph order; `projections` their frozen_projection), its
    outputs split back. Where every GEMM reads one input node the fused one reads it too (pad_mm's padding, if all
    share it, is kept); else it reads `source`, and the row-padded GEMMs' slices take its parts. Every value is made
    before the graph changes: an error leaves it as it was."""
    inputs = {projection[0] for projection in projections}
    inp = projections[0][0] if len(inputs) == 1 else source
    weights = [attribute(module, weight.target) for _, weight, _ in projections]
    sizes = [w.shape[1] for w in weights]
    weight = _concatenated_weight(weights)
    bias = None if projections[0][2] is None else torch.cat([attribute(module, b.target) for _, _, b in projections])
    fake_mode = nodes[0].meta["val"].fake_mode
    fake_weight = static_fake(fake_mode, weight)
    fake_bias = None if bias is None else static_fake(fake_mode, bias)
    fake_product = fake_gemm(inp.meta["val"], fake_weight, fake_bias)
    with fake_mode:
        parts = aten.split_with_sizes.default(fake_product, sizes, 1)
    with graph.inserting_before(nodes[0]):
        weight_node = hold_constant(graph, weight, fake_weight, "projections")
        bias_node = None if bias is None else hold_constant(graph, bias, fake_bias, "projections")
        product = gemm(graph, inp, weight_node, bias_node, fake_product)
        split = graph.call_function(aten.split_with_sizes.default, (product, sizes, 1))
        split.meta["val"] = list(parts)
        for index, (node, projection) in enumerate(zip(nodes, projections)):
            part = graph.call_function(operator.getitem, (split, index))
            part.meta["val"] = parts[index]
            if projection[0] is inp:
                node.replace_all_uses_with(part)
            else:  # (a row-padded GEMM: its slices back to the source's rows take the part)
                for row_slice in list(node.users):
                    row_slice.replace_all_uses_with(part)
                    graph.erase_node(row_slice)
    for node, (node_input, _, _) in zip(nodes, projections):
        graph.erase_node(node)
        if node_input is not inp and not node_input.users:
            graph.erase_node(node_input)  # (a row padding no GEMM reads any more)


def concat_projections(graph: fx.Graph) -> int:
    """Fuse every group of two or more projections of one input over frozen weights; returns the GEMMs removed."""
    module = graph.owning_module
    if module is None:
        return 0
    groups: dict = {}
    for node in graph.nodes:
        projection = frozen_projection(node)
        if projection is None:
            continue
        inp, weight, bias = projection
        value = weight.meta["val"]
        key = (_group_input(node, inp), bias is not None, value.shape[0], value.dtype, value.device)
        groups.setdefault(key, []).append(node)
    removed = 0
    for nodes in groups.values():
        if len(nodes) < 2:
            continue
        try:
            # Read again: a group fused before may have replaced this one's input (a product or slice it erased).
            projections = [frozen_projection(node) for node in nodes]
            (source,) = {_group_input(node, inp) for node, (inp, _, _) in zip(nodes, projections)}
            _fuse(graph, module, nodes, projections, source)
        except Exception as error:  # (a group this pass cannot fuse stays as it was: the compile goes on)
            if strict_mode():
                raise
            LOGGER.warning("glacompiler: projections %s left unfused (%r)", [node.name for node in nodes], error)
            continue
        removed += len(nodes) - 1
    return removed

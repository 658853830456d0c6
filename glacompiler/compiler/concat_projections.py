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
"""
from __future__ import annotations

import logging
import operator
from typing import Optional

import torch
from torch import fx
from torch._dynamo.utils import counters
from torch._inductor import custom_graph_pass
from torch._inductor.custom_graph_pass import CustomGraphPass

from .graph_pass import as_passes, strict_mode

# Inductor passes is_inference to a pass of this kind (torch 2.13 on); torch 2.11 has none.
_InferenceAwarePass = getattr(custom_graph_pass, "CustomInferenceAwareGraphPass", CustomGraphPass)

aten = torch.ops.aten
LOGGER = logging.getLogger("glacompiler")


def _frozen(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and isinstance(node.meta.get("val"), torch.Tensor)


def _projection(node: fx.Node) -> Optional[tuple]:
    """(input, weight, bias or None) of an mm / addmm over a frozen [K, N] weight (and a frozen [N] bias), else None."""
    if node.op != "call_function" or node.kwargs:
        return None  # (addmm with beta / alpha: left alone)
    if node.target is aten.mm.default and len(node.args) == 2:
        (inp, weight), bias = node.args, None
    elif node.target is aten.addmm.default and len(node.args) == 3:
        bias, inp, weight = node.args
    else:
        return None
    if not (_frozen(weight) and weight.meta["val"].dim() == 2 and isinstance(inp, fx.Node)):
        return None
    if bias is not None and not (_frozen(bias) and tuple(bias.meta["val"].shape) == (weight.meta["val"].shape[1],)):
        return None  # (a bias that broadcasts, [1], cannot be concatenated)
    return inp, weight, bias


def _attribute(module: torch.nn.Module, target: str) -> torch.Tensor:
    for name in target.split("."):
        module = getattr(module, name)
    return module


def _concatenated_weight(weights: list) -> torch.Tensor:
    """[K, sum N]: stored as the weights are, row-major [N, K] transposed (nn.Linear's), or as [K, N]."""
    if all(w.t().is_contiguous() for w in weights):
        return torch.cat([w.t() for w in weights]).t()
    return torch.cat(weights, dim=1)


def _fresh_attribute(module: torch.nn.Module, value: torch.Tensor) -> str:
    index = 0
    while hasattr(module, f"_gla_projections{index}"):
        index += 1
    name = f"_gla_projections{index}"
    module.register_buffer(name, value)
    return name


def _fuse(graph: fx.Graph, module: torch.nn.Module, nodes: list, projections: list) -> None:
    """One GEMM for `nodes` (mm or addmm of one input, in graph order; `projections` their _projection), its outputs
    split back. Every value is made before the graph changes: an error leaves it as it was."""
    inp = projections[0][0]
    weights = [_attribute(module, weight.target) for _, weight, _ in projections]
    sizes = [w.shape[1] for w in weights]
    weight = _concatenated_weight(weights)
    bias = None if projections[0][2] is None else torch.cat([_attribute(module, b.target) for _, _, b in projections])
    fake_mode = nodes[0].meta["val"].fake_mode
    # (static shapes: the constants' sizes are not the graph's symbols)
    fake_weight = fake_mode.from_tensor(weight, static_shapes=True)
    fake_bias = None if bias is None else fake_mode.from_tensor(bias, static_shapes=True)
    with fake_mode:
        if bias is None:
            fake_product = aten.mm.default(inp.meta["val"], fake_weight)
        else:
            fake_product = aten.addmm.default(fake_bias, inp.meta["val"], fake_weight)
        parts = aten.split_with_sizes.default(fake_product, sizes, 1)
    weight_name = _fresh_attribute(module, weight)
    bias_name = None if bias is None else _fresh_attribute(module, bias)
    with graph.inserting_before(nodes[0]):
        weight_node = graph.get_attr(weight_name)
        weight_node.meta["val"] = fake_weight
        if bias_name is None:
            product = graph.call_function(aten.mm.default, (inp, weight_node))
        else:
            bias_node = graph.get_attr(bias_name)
            bias_node.meta["val"] = fake_bias
            product = graph.call_function(aten.addmm.default, (bias_node, inp, weight_node))
        product.meta["val"] = fake_product
        split = graph.call_function(aten.split_with_sizes.default, (product, sizes, 1))
        split.meta["val"] = list(parts)
        for index, node in enumerate(nodes):
            part = graph.call_function(operator.getitem, (split, index))
            part.meta["val"] = parts[index]
            node.replace_all_uses_with(part)
    for node in nodes:
        graph.erase_node(node)


def concat_projections(graph: fx.Graph) -> int:
    """Fuse every group of two or more projections of one input over frozen weights; returns the GEMMs removed."""
    module = graph.owning_module
    if module is None:
        return 0
    groups: dict = {}
    for node in graph.nodes:
        projection = _projection(node)
        if projection is None:
            continue
        inp, weight, bias = projection
        value = weight.meta["val"]
        key = (inp, bias is not None, value.shape[0], value.dtype, value.device)
        groups.setdefault(key, []).append((node, projection))
    removed = 0
    for group in groups.values():
        if len(group) < 2:
            continue
        nodes, projections = zip(*group)
        try:
            _fuse(graph, module, nodes, projections)
        except Exception as error:  # (a group this pass cannot fuse stays as it was: the compile goes on)
            if strict_mode():
                raise
            LOGGER.warning("glacompiler: projections %s left unfused (%r)", [node.name for node in nodes], error)
            continue
        removed += len(nodes) - 1
    return removed


class ProjectionConcatPass(_InferenceAwarePass):
    """concat_projections as Inductor's post_grad_custom_pre_pass, then the pass the user had set there."""

    def __init__(self, chained: Optional[object] = None):
        self.chained = chained

    def __call__(self, graph: fx.Graph, is_inference: Optional[bool] = None) -> None:
        counters["glacompiler"]["projections_concatenated"] += concat_projections(graph)
        for chained in as_passes(self.chained):
            if _InferenceAwarePass is not CustomGraphPass and isinstance(chained, _InferenceAwarePass):
                chained(graph, is_inference=is_inference)
            else:
                chained(graph)

    def uuid(self) -> Optional[str]:
        # None: Inductor's FX-graph cache is bypassed for the graphs this pass runs on. The cache key is made before
        # post-grad passes, and Inductor's own frozen constants enter it by shape only, fetched again from the model
        # on a hit; ours would be pickled into the entry: another model of the same shapes would get these weights.
        return None


def with_projection_concat(patches: dict) -> dict:
    """Inductor config patches with ProjectionConcatPass as the post-grad pre-pass where they freeze the graph."""
    if not patches.get("freezing", torch._inductor.config.freezing):
        return patches
    chained = patches.get("post_grad_custom_pre_pass", torch._inductor.config.post_grad_custom_pre_pass)
    return {**patches, "post_grad_custom_pre_pass": ProjectionConcatPass(chained)}

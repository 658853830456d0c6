"""What the passes over a frozen graph's projections share: finding a GEMM over frozen weights, and holding a
constant they make on the graph's module.

Under Inductor's freezing the model's weights are constants of the graph (get_attr nodes of its module), so a pass
may compute new weights from them once, at compile time, instead of every step."""
from __future__ import annotations

from typing import Optional

import torch
from torch import fx

aten = torch.ops.aten
OWN_PREFIX = "_gla_"  # the names of the constants these passes make


def is_frozen(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and isinstance(node.meta.get("val"), torch.Tensor)


def frozen_projection(node: fx.Node) -> Optional[tuple]:
    """(input, weight, bias or None) of an mm / addmm over a frozen [K, N] weight (and a frozen [N] bias), else None."""
    if node.op != "call_function" or node.kwargs:
        return None  # (addmm with beta / alpha: left alone)
    if node.target is aten.mm.default and len(node.args) == 2:
        (inp, weight), bias = node.args, None
    elif node.target is aten.addmm.default and len(node.args) == 3:
        bias, inp, weight = node.args
    else:
        return None
    if not (is_frozen(weight) and weight.meta["val"].dim() == 2 and isinstance(inp, fx.Node)):
        return None
    if bias is not None and not (is_frozen(bias) and tuple(bias.meta["val"].shape) == (weight.meta["val"].shape[1],)):
        return None  # (a bias that broadcasts, [1], cannot be concatenated or padded)
    return inp, weight, bias


def attribute(module: torch.nn.Module, target: str) -> torch.Tensor:
    for name in target.split("."):
        module = getattr(module, name)
    return module


def static_fake(fake_mode, value: torch.Tensor):
    """The fake tensor of a constant, of static shape (a constant's sizes are not the graph's symbols)."""
    return fake_mode.from_tensor(value, static_shapes=True)


def hold_constant(graph: fx.Graph, value: torch.Tensor, fake, kind: str) -> fx.Node:
    """A get_attr node (inserted at the graph's insertion point) for `value`, registered on the graph's module under a
    fresh name; `fake` (static_fake's) is its meta value."""
    module = graph.owning_module
    prefix = f"{OWN_PREFIX}{kind}"
    index = 0
    while hasattr(module, f"{prefix}{index}"):
        index += 1
    module.register_buffer(f"{prefix}{index}", value)
    node = graph.get_attr(f"{prefix}{index}")
    node.meta["val"] = fake
    return node


def fake_gemm(fake_input, fake_weight, fake_bias):
    """The meta value of mm (addmm with a bias) over fake tensors of one fake mode."""
    with fake_input.fake_mode:
        if fake_bias is None:
            return aten.mm.default(fake_input, fake_weight)
        return aten.addmm.default(fake_bias, fake_input, fake_weight)


def gemm(graph: fx.Graph, inp: fx.Node, weight: fx.Node, bias: Optional[fx.Node], fake_product) -> fx.Node:
    """mm (addmm with a bias) of `inp` by `weight`, inserted at the graph's insertion point; `fake_product` its meta
    value (made before the graph changes)."""
    if bias is None:
        product = graph.call_function(aten.mm.default, (inp, weight))
    else:
        product = graph.call_function(aten.addmm.default, (bias, inp, weight))
    product.meta["val"] = fake_product
    return product


def drop_if_unused(graph: fx.Graph, node: fx.Node) -> None:
    """Erase a get_attr node nothing reads any more; where it held a constant one of these passes made and no other
    node names it, free that too (Inductor's own frozen constants are left to Inductor)."""
    if node.op != "get_attr" or node.users:
        return
    graph.erase_node(node)
    if not node.target.startswith(OWN_PREFIX) or any(other.op == "get_attr" and other.target == node.target
                                                     for other in graph.nodes):
        return
    delattr(graph.owning_module, node.target)

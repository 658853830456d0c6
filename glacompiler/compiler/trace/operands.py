"""Operands of a product traced back to the tensor they read: through views, lossless upcasts and scalar
multiplies (SDPA's math path folds sqrt(scale) into both q and k; HF upcasts before softmax)."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import fx

from ..decline import UNEXPECTED_GRAPH, Decline
from .layout import Layout, fake_value, compose, trace

aten = torch.ops.aten
prims = torch.ops.prims

LOSSLESS_UPCASTS = {(torch.float16, torch.float32), (torch.bfloat16, torch.float32)}


def is_call(node, *targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def scalar_value(arg) -> Optional[float]:
    """A Python number, or None (tensors and SymFloats do not count: the scale must be a constant)."""
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return float(arg)
    return None


def convert_dtypes(node: fx.Node) -> Optional[tuple]:
    """(source dtype, target dtype) for a dtype conversion node."""
    if not is_call(node, prims.convert_element_type.default, aten._to_copy.default):
        return None
    source, out = fake_value(node.args[0]), fake_value(node)
    if source is None or out is None:
        return None
    if node.target is aten._to_copy.default and set(node.kwargs) - {"dtype", "layout", "device", "memory_format"}:
        return None
    if out.device != source.device:
        return None
    return source.dtype, out.dtype


def is_float_cast(node: fx.Node) -> bool:
    """A conversion between floating dtypes (precision only: scores and probabilities pass through them)."""
    dtypes = convert_dtypes(node)
    return dtypes is not None and dtypes[0].is_floating_point and dtypes[1].is_floating_point


def only_user(node: fx.Node) -> Optional[fx.Node]:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def scalar_factor(node: fx.Node) -> Optional[tuple]:
    """(tensor input, factor) for x * c, c * x or x / c with a Python number c."""
    if is_call(node, aten.mul.Tensor, aten.mul.Scalar):
        a, b = node.args[:2]
        if isinstance(a, fx.Node) and scalar_value(b) is not None:
            return a, scalar_value(b)
        if isinstance(b, fx.Node) and scalar_value(a) is not None:
            return b, scalar_value(a)
    if is_call(node, aten.div.Tensor, aten.div.Scalar) and not node.kwargs.get("rounding_mode"):
        a, b = node.args[:2]
        value = scalar_value(b)
        if isinstance(a, fx.Node) and value is not None and value != 0:
            return a, 1.0 / value
    return None


@dataclasses.dataclass
class Operand:
    base: fx.Node
    layout: Layout  # the operand over base
    factor: float  # product of scalar multipliers between base and the operand
    nodes: list  # intermediate nodes walked through (views, casts, multiplies)


def walk_operand(node: fx.Node, allow_scale: bool, any_float_cast: bool = False) -> Operand:
    """Views, lossless upcasts (any float cast with any_float_cast: the probabilities may be rounded to the
    input dtype before the value product, as HF does) and, with allow_scale, scalar multiplies."""
    traced = trace(node)
    if traced is None:
        raise Decline(f"{node.name} has no tensor metadata", fix=UNEXPECTED_GRAPH, node=node)
    layout, base, factor, nodes = traced.layout, traced.base, 1.0, list(traced.chain)
    while True:
        dtypes = convert_dtypes(base)
        scaled = scalar_factor(base) if allow_scale else None
        lossless = dtypes is not None and (dtypes in LOSSLESS_UPCASTS or dtypes[0] == dtypes[1])
        if lossless or (any_float_cast and is_float_cast(base)):
            source = base.args[0]
        elif scaled is not None:
            source, value = scaled
            factor *= value
        else:
            break
        inner = trace(source)
        if inner is None:
            break
        composed = compose(layout, inner.layout)
        if composed is None:
            break
        nodes += [base] + inner.chain
        layout, base = composed, inner.base
    if not math.isfinite(factor):
        raise Decline("an operand is scaled by a non-finite factor",
                      fix="scale q and k by a finite factor (inf or nan scores are not attention)")
    return Operand(base, layout, factor, nodes)

"""Positions written as a running count of ones, turned into the iota they equal.

transformers 5.17's BLOOM, given no attention mask, makes one of ones and takes its ALiBi key positions as the
running count of attended keys: ((mask.cumsum(-1) - 1) * mask). Over a mask of ones that is the key index, which
the score walk reads as an iota (score_mods.key_iota). What decides it is the graph: a cumsum of a constant fill of
ones (aten.full(sizes, 1)) becomes an iota along its axis, starting at 1 and expanded over the others; a count over
any other tensor (a mask the model was given counts past its padding, which the op's ALiBi cannot express) is
left alone. Every value is kept: only float32/float64 and integer counts are rewritten (a half-precision count is
inexact past 2048), and nothing that reaches the graph's outputs (the iota is expanded with stride 0, which a
caller could see)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import fx

from ..rewrite.emit import Emitter
from .layout import fake_value, is_view_like
from .operands import is_call, scalar_value

aten = torch.ops.aten
prims = torch.ops.prims
# Dtypes whose running count of ones equals the index exactly (up to 2^24 keys in float32).
EXACT_COUNTS = (torch.float32, torch.float64, torch.int32, torch.int64)
EXACT_SHIFT = 1 << 24  # shifts folded into the iota's start: integers float32 holds exactly


def _ones_shape(node) -> Optional[list]:
    """The size list of aten.full(size, 1) (ints or size nodes), or None."""
    if is_call(node, aten.full.default) and scalar_value(node.args[1]) == 1.0 and isinstance(node.args[0], (list, tuple)):
        return list(node.args[0])
    return None


def _shift(user: fx.Node, counts: fx.Node) -> Optional[int]:
    """c for counts - c (-c for counts + c) with c an integer float32 holds exactly; else None."""
    if not is_call(user, aten.sub.Tensor, aten.add.Tensor) or user.args[0] is not counts or user.kwargs.get("alpha", 1) != 1:
        return None
    value = scalar_value(user.args[1])
    if value is None or not math.isfinite(value) or not value.is_integer() or abs(value) >= EXACT_SHIFT:
        return None
    return int(value) if user.target is aten.sub.Tensor else -int(value)


def _drops_ones(user: fx.Node, counts: fx.Node, ones: fx.Node) -> bool:
    """counts * ones, the product neither broadcasting nor changing the dtype: counts itself."""
    return (is_call(user, aten.mul.Tensor) and set(user.args[:2]) == {counts, ones}
            and fake_value(user).shape == fake_value(counts).shape and fake_value(user).dtype == fake_value(counts).dtype)


def _reaches_output(node: fx.Node, ones: fx.Node) -> bool:
    """Whether the count, through views and the shifts and products the rewrite folds, is one of the graph's
    outputs."""
    frontier = [node]
    while frontier:
        current = frontier.pop()
        for user in current.users:
            if user.op == "output":
                return True
            if is_view_like(user) or _shift(user, current) is not None or _drops_ones(user, current, ones):
                frontier.append(user)
    return False


def _expanded_iota(anchor: fx.Node, sizes: list, axis: int, start: int, dtype: torch.dtype) -> list:
    """Nodes computing start, start + 1, ... along `axis` of a tensor of `sizes`, the same for every index of the
    other axes (the last one is the result)."""
    emit = Emitter(anchor.graph, anchor)
    device = fake_value(anchor).device
    iota = emit.call(prims.iota.default, sizes[axis], start=start, step=1, dtype=torch.int64, device=device,
                     requires_grad=False)
    if dtype != torch.int64:
        iota = emit.call(prims.convert_element_type.default, iota, dtype)
    line = emit.call(aten.view.default, iota, [1] * axis + [-1] + [1] * (len(sizes) - axis - 1))
    emit.call(aten.expand.default, line, sizes)
    return emit.created  # (the Emitter gives each the anchor's stack trace)


def _replace(node: fx.Node, ones: fx.Node, sizes: list, axis: int, start: int) -> None:
    """node (a count starting at `start`) by an iota; then its shifts (a new iota from the shifted start, the
    one made here erased) and its products with the ones (dropped). key_iota would walk through a shift itself;
    folding it is what puts the product with the ones right on an iota, where it can be dropped."""
    graph = node.graph
    created = _expanded_iota(node, sizes, axis, start, fake_value(node).dtype)
    counts = created[-1]
    node.replace_all_uses_with(counts)
    graph.erase_node(node)
    for user in list(counts.users):
        shift = _shift(user, counts)
        if shift is not None:
            _replace(user, ones, sizes, axis, start - shift)
        elif _drops_ones(user, counts, ones):
            user.replace_all_uses_with(counts)
            graph.erase_node(user)
    for made in reversed(created):
        if not made.users:
            graph.erase_node(made)


def running_counts_as_positions(graph: fx.Graph) -> int:
    """Rewrite every cumsum of a fill of ones that can be (see the module docstring); returns how many were."""
    rewritten = 0
    for node in list(graph.nodes):
        if not is_call(node, aten.cumsum.default) or set(node.kwargs) - {"dtype"} or len(node.args) < 2:
            continue
        ones, sizes, value = node.args[0], _ones_shape(node.args[0]), fake_value(node)
        if sizes is None or value is None or value.dim() == 0 or len(sizes) != value.dim():
            continue
        if value.dtype not in EXACT_COUNTS or _reaches_output(node, ones):
            continue
        _replace(node, ones, sizes, node.args[1] % value.dim(), 1)
        if not ones.users:
            graph.erase_node(ones)
        rewritten += 1
    return rewritten


__all__ = ["running_counts_as_positions"]

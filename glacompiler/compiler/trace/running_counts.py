"""Positions written as a running count of ones, turned into the iota they equal.

transformers 5.17's BLOOM, given no attention mask, makes one of ones and takes its ALiBi key positions as the
running count of attended keys: ((mask.cumsum(-1) - 1) * mask). Over a mask of ones that is the key index, which
the score walk reads as an iota (score_mods.key_iota); over a mask the model was given it is a count that skips
padding, which the op's ALiBi cannot express, and it is left alone. The rewrite keeps every value: the cumsum of a
constant fill of ones along an axis becomes an iota along that axis (starting at 1, less a constant subtracted
from it) expanded over the others, and a product with that same fill of ones is dropped."""
from __future__ import annotations

from typing import Optional

import torch
from torch import fx

from ..rewrite.emit import Emitter
from .layout import fake_value
from .operands import is_call, scalar_value

aten = torch.ops.aten
prims = torch.ops.prims
# Dtypes whose running count of ones equals the index exactly (up to 2^24 keys in float32).
EXACT_COUNTS = (torch.float32, torch.float64, torch.int32, torch.int64)


def _ones_shape(node) -> Optional[list]:
    """The size list of aten.full(size, 1) (ints or size nodes), or None."""
    if is_call(node, aten.full.default) and scalar_value(node.args[1]) == 1.0 and isinstance(node.args[0], (list, tuple)):
        return list(node.args[0])
    return None


def _expanded_iota(anchor: fx.Node, sizes: list, axis: int, start: int, dtype: torch.dtype) -> fx.Node:
    """start, start + 1, ... along `axis` of a tensor of `sizes`, the same for every index of the other axes."""
    emit = Emitter(anchor.graph, anchor)
    device = fake_value(anchor).device
    iota = emit.call(prims.iota.default, sizes[axis], start=start, step=1, dtype=torch.int64, device=device,
                     requires_grad=False)
    if dtype != torch.int64:
        iota = emit.call(prims.convert_element_type.default, iota, dtype)
    line = emit.call(aten.view.default, iota, [1] * axis + [-1] + [1] * (len(sizes) - axis - 1))
    expanded = emit.call(aten.expand.default, line, sizes)
    for created in emit.created:
        created.meta.update({k: v for k, v in anchor.meta.items() if k not in ("val", "tensor_meta")})
    return expanded


def _fold_users(counts: fx.Node, ones: fx.Node, sizes: list, axis: int, start: int) -> None:
    """Fold count - c (a new iota from start - c) and count * ones (the count itself) into the count's iota."""
    graph = counts.graph
    for user in list(counts.users):
        shift = scalar_value(user.args[1]) if is_call(user, aten.sub.Tensor, aten.add.Tensor) and user.args[0] is counts \
            else None
        if shift is not None and shift == int(shift) and user.kwargs.get("alpha", 1) == 1:
            new_start = start - int(shift) if user.target is aten.sub.Tensor else start + int(shift)
            replacement = _expanded_iota(user, sizes, axis, new_start, fake_value(user).dtype)
            user.replace_all_uses_with(replacement)
            graph.erase_node(user)
            _fold_users(replacement, ones, sizes, axis, new_start)
        elif (is_call(user, aten.mul.Tensor) and set(user.args[:2]) == {counts, ones}
              and fake_value(user).shape == fake_value(counts).shape
              and fake_value(user).dtype == fake_value(counts).dtype):
            user.replace_all_uses_with(counts)
            graph.erase_node(user)


def running_counts_as_positions(graph: fx.Graph) -> int:
    """Rewrite every cumsum of a fill of ones (see the module docstring); returns how many were rewritten."""
    rewritten = 0
    for node in list(graph.nodes):
        if not is_call(node, aten.cumsum.default) or set(node.kwargs) - {"dtype"}:
            continue
        ones, sizes, value = node.args[0], _ones_shape(node.args[0]), fake_value(node)
        if sizes is None or value is None or len(sizes) != value.dim() or len(node.args) < 2:
            continue
        if value.dtype not in EXACT_COUNTS:
            continue  # a count in half precision stops being exact past 2048 (and rounds as it goes)
        axis = node.args[1] % value.dim()
        counts = _expanded_iota(node, sizes, axis, 1, value.dtype)
        node.replace_all_uses_with(counts)
        graph.erase_node(node)
        _fold_users(counts, ones, sizes, axis, 1)
        rewritten += 1
    return rewritten


__all__ = ["running_counts_as_positions"]

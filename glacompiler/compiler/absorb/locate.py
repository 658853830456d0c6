"""Where each element of a tensor comes from, through views and narrowings (slices at an offset, pieces of a
split): a Located is a Layout (trace/layout.py, runs along the base's axes) plus a start index per base axis.

trace/layout.py's layouts start every axis at 0; the expansion of a latent reads the product's columns at
offsets (K's nope part and V are two pieces of one kv_b_proj output), so this module carries the offsets
beside the layout while it follows the chain back to the product."""
from __future__ import annotations

import dataclasses
import operator
from typing import Optional

import torch
from torch import fx

from ..decline import UNEXPECTED_GRAPH, Decline
from ..trace.layout import Layout, Piece, fake_value, identity, merge_adjacent, resolve_run, trace
from ..trace.sizes import is_concrete, known_equal

aten = torch.ops.aten

SPLIT_OPS = (aten.split_with_sizes.default, aten.split.Tensor)


@dataclasses.dataclass(frozen=True)
class Located:
    """A tensor X read from `base`: X's dims as runs of base axes, starting at `offsets` (one int per axis)."""

    base: fx.Node
    layout: Layout
    offsets: tuple


def at_origin(node: fx.Node, layout: Layout) -> Located:
    return Located(node, layout, (0,) * len(layout.base_sizes))


def _compose_runs(outer: Layout, inner: Layout) -> Optional[Layout]:
    """outer (over Y) then inner (Y over Z). An axis of Y that is one run of Z is read by sub-runs at any
    length (a narrowed axis need not divide the run, unlike trace/layout.py's compose)."""
    dims = []
    for dim in outer.dims:
        pieces = []
        for piece in dim:
            if piece.axis is None:
                pieces.append(piece)
                continue
            inner_dim = inner.dims[piece.axis]
            if len(inner_dim) == 1:
                run = inner_dim[0]
                pieces.append(Piece(None, piece.size) if run.axis is None
                              else Piece(run.axis, piece.size, run.step * piece.step))
                continue
            runs = resolve_run(inner_dim, piece.step, piece.size)
            if runs is None:
                return None
            pieces.extend(runs)
        dims.append(merge_adjacent(pieces))
    return Layout(tuple(dims), inner.base_sizes)


def _shift(inner: Layout, offsets: tuple) -> Optional[list]:
    """Offsets along Y's axes as offsets along Z's (None when an offset falls in an axis of Y made of several
    runs of Z: the start would have to be decomposed, which this does not follow)."""
    shifted = [0] * len(inner.base_sizes)
    for axis, offset in enumerate(offsets):
        if offset == 0:
            continue
        dim = inner.dims[axis]
        if len(dim) != 1:
            return None
        if dim[0].axis is not None:
            shifted[dim[0].axis] += offset * dim[0].step
    return shifted


def compose_located(outer: Located, inner: Layout, inner_base: fx.Node, inner_offsets=None) -> Located:
    layout = _compose_runs(outer.layout, inner)
    shifted = _shift(inner, outer.offsets)
    if layout is None or shifted is None or any(not is_concrete(o) for o in shifted):
        raise Decline(f"cannot follow which elements of {inner_base.name} are read",
                      fix="views only (view, reshape, transpose, permute, expand, slice, select) between the "
                          "projections or caches and the attention and the latent product", node=inner_base)
    if inner_offsets is not None:
        shifted = [a + b for a, b in zip(shifted, inner_offsets)]
    return Located(inner_base, layout, tuple(shifted))


def narrowing(node: fx.Node) -> Optional[tuple]:
    """(source, dim, start) when node is source narrowed along dim from start: a slice with step 1 or a piece
    of a split (getitem of split / split_with_sizes)."""
    if node.op != "call_function":
        return None
    if node.target is aten.slice.Tensor:
        source = node.args[0]
        value = fake_value(source)
        step = node.args[4] if len(node.args) > 4 else 1
        start = node.args[2] if len(node.args) > 2 else 0
        if value is None or step != 1 or not is_concrete(start if start is not None else 0):
            return None
        dim = node.args[1] if len(node.args) > 1 else 0
        dim = dim + value.dim() if dim < 0 else dim
        start = 0 if start is None else start
        if start < 0:
            if not is_concrete(value.shape[dim]):
                return None
            start = max(start + value.shape[dim], 0)
        return source, dim, start
    if node.target is operator.getitem and isinstance(node.args[0], fx.Node):
        split = node.args[0]
        if split.op != "call_function" or split.target not in SPLIT_OPS:
            return None
        source, index = split.args[0], node.args[1]
        value = fake_value(source)
        dim = split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)
        dim = dim + value.dim() if dim < 0 else dim
        if split.target is aten.split_with_sizes.default:
            sizes = list(split.args[1])
        else:
            chunk = split.args[1]
            total = value.shape[dim]
            if not (is_concrete(chunk) and is_concrete(total)):
                return None
            sizes = [min(chunk, total - start) for start in range(0, total, chunk)]
        if not all(is_concrete(s) for s in sizes[:index]):
            return None
        return source, dim, sum(sizes[:index])
    return None


def locate(start: Located) -> Located:
    """Follow start back through views and narrowings to the first node that is neither."""
    current = start
    while True:
        traced = trace(current.base)
        if traced is None:
            raise Decline(f"{current.base.name} has no tensor metadata", fix=UNEXPECTED_GRAPH, node=current.base)
        if traced.base is not current.base:
            current = compose_located(current, traced.layout, traced.base)
        narrowed = narrowing(current.base)
        if narrowed is None:
            return current
        source, dim, begin = narrowed
        value = fake_value(current.base)
        inner = identity(list(value.shape))
        inner = Layout(inner.dims, tuple(fake_value(source).shape))
        offsets = [0] * value.dim()
        offsets[dim] = begin
        current = compose_located(current, inner, source, offsets)


def narrowed_axis(located: Located, dim: int, axis: int, begin, length) -> Located:
    """located with op dim `dim` (one run along base axis `axis`) restricted to [begin, begin + length) of it."""
    piece = located.layout.dims[dim][0]
    dims = list(located.layout.dims)
    dims[dim] = () if known_equal(length, 1) else (Piece(axis, length, piece.step),)
    offsets = list(located.offsets)
    offsets[axis] += begin * piece.step
    return Located(located.base, Layout(tuple(dims), located.layout.base_sizes), tuple(offsets))

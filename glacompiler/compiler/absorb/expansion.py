"""A key or value tensor cut along its head dim into the parts it was assembled from.

The ways an expanding MLA/GLA writes K = [latent @ W_UK_h, rope key]:

| written as                                        | in the ATen graph                                         |
|---------------------------------------------------|-----------------------------------------------------------|
| torch.cat([k_nope, k_rope.expand(...)], -1)       | cat on the head dim                                       |
| k = x.new_empty(...); k[..., :n].copy_(k_nope);   | empty, then slice_scatter(base, copy(slice, src), dim,    |
|   k[..., n:].copy_(k_rope)  (transformers' MLA)   |   start, end) per part (copy broadcasts src, e.g. expand) |
| k = k_nope  (no rope key)                         | the product's view itself                                  |

Each Part says which op head-dim channels [start, start + length) come from which tensor, located
(locate.py) down to the node that computes them: a product (latent @ weight) or a cache (the rope key)."""
from __future__ import annotations

import dataclasses

import torch
from torch import fx

from ..decline import Decline
from ..trace.layout import Layout, broadcast_layout, fake_value
from ..trace.operands import is_call
from ..trace.sizes import is_concrete
from .locate import Located, compose_located, locate, narrowed_axis

aten = torch.ops.aten

UNWRITTEN = (aten.empty.memory_format, aten.empty_like.default, aten.new_empty.default, aten.empty_strided.default)


@dataclasses.dataclass
class Part:
    start: int  # first op head-dim channel
    length: int
    source: Located  # the op tensor's [.., start:start+length] over the node that computes it


def _axis_of(node: fx.Node, dim) -> int:
    rank = fake_value(node).dim()
    return dim + rank if dim < 0 else dim


def _end(end, size) -> int:
    return size if end is None or end > size else end


def split_parts(view: Located, dim: int, op_start: int = 0) -> list:
    """The op tensor `view` (its head dim, op dim `dim`, one run along an axis of view.base) as Parts."""
    located = locate(view)
    run = located.layout.dims[dim]
    length = _dim_size(located, dim)
    if len(run) != 1 or run[0].axis is None:
        return [Part(op_start, length, located)]
    axis, step = run[0].axis, run[0].step
    node = located.base
    begin = located.offsets[axis]
    if step != 1:
        return [Part(op_start, length, located)]
    if is_call(node, aten.cat.default) and _axis_of(node, node.args[1] if len(node.args) > 1 else 0) == axis:
        parts, at = [], 0
        for piece in node.args[0]:
            size = fake_value(piece).shape[axis]
            if not is_concrete(size):
                raise Decline("a part of the concatenated key has a symbolic width",
                              fix="key parts of fixed widths (constant nope and rope head dims) in the "
                                  "torch.cat", node=node)
            lo, hi = max(begin, at), min(begin + length, at + size)
            if lo < hi:
                sub = narrowed_axis(located, dim, axis, lo - begin, hi - lo)
                offsets = list(sub.offsets)
                offsets[axis] -= at
                parts += split_parts(Located(piece, Layout(sub.layout.dims, tuple(fake_value(piece).shape)),
                                             tuple(offsets)), dim, op_start + lo - begin)
            at += size
        return parts
    if is_call(node, aten.slice_scatter.default) and _axis_of(node, node.args[2]) == axis:
        base, source = node.args[0], node.args[1]
        size = fake_value(node).shape[axis]
        start = node.args[3] if len(node.args) > 3 else 0
        end = _end(node.args[4] if len(node.args) > 4 else None, size)
        step = node.args[5] if len(node.args) > 5 else 1
        if step != 1 or not (is_concrete(start) and is_concrete(end)):
            raise Decline("a part of the key is written with a step or a symbolic range",
                          fix="write the key's parts with constant slices along the head dim (k[..., :nope] = ..., "
                              "k[..., nope:] = ...)", node=node)
        start = start + size if start < 0 else start
        parts = []
        for lo, hi, into_source in ((begin, min(begin + length, start), False), (max(begin, start),
                                    min(begin + length, end), True), (max(begin, end), begin + length, False)):
            if lo >= hi:
                continue
            sub = narrowed_axis(located, dim, axis, lo - begin, hi - lo)
            if into_source:
                offsets = list(sub.offsets)
                offsets[axis] -= start
                sub = Located(source, Layout(sub.layout.dims, tuple(fake_value(source).shape)), tuple(offsets))
            else:
                sub = Located(base, Layout(sub.layout.dims, tuple(fake_value(base).shape)), sub.offsets)
            parts += split_parts(sub, dim, op_start + lo - begin)
        return parts
    if is_call(node, aten.copy.default):
        destination, source = node.args[0], node.args[1]
        spread = broadcast_layout(list(fake_value(source).shape), list(fake_value(destination).shape))
        if spread is None:
            raise Decline("a part of the key is copied from a tensor that does not broadcast to it",
                          fix="copy into each part of the key a tensor that broadcasts to it (the rope key expanded "
                              "over the heads)", node=node)
        return split_parts(compose_located(located, spread, source), dim, op_start)
    if node.op == "call_function" and node.target in UNWRITTEN:
        raise Decline("part of the key is never written (an empty tensor)",
                      fix="write every channel of the key (its nope and rope parts) before the attention", node=node)
    return [Part(op_start, length, located)]


def _dim_size(located: Located, dim: int):
    """The size of op dim `dim` (the product of its runs)."""
    size = 1
    for piece in located.layout.dims[dim]:
        size = size * piece.size
    return size

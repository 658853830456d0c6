"""Masks found on an attention site, reduced to what the op takes: one tensor broadcastable to
[B, Hq, Lq, S], boolean (True = attend) or additive.

Normalisations (exact, but a fill: see score_side.NEGLIGIBLE_FILL; anything else stays an additive float mask,
which the op also takes):

| mask as found                                   | becomes                                                   |
|-------------------------------------------------|-----------------------------------------------------------|
| where(cond, 0, fill): fill -inf (SDPA's bool->float) or <= -65504 (cuDNN's, min-fills) | boolean cond  |
| where(cond, fill, 0)                            | boolean, attend where cond is False                       |
| constant_pad_nd at the ends (efficient attention pads its bias) read within the original | the unpadded tensor |
| prefixes (HF's mask[..., :key_length])          | a slice of the mask                                       |
| views of any of these                           | followed exactly                                          |
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import fx

from ..decline import UNEXPECTED_GRAPH, Decline
from .layout import Layout, fake_value, broadcast_layout, compose, trace
from .operands import is_call, is_float_cast
from .products import align
from .score_side import NEGLIGIBLE_FILL, MaskUse, fill_value
from .sizes import known_equal, size_hint

aten = torch.ops.aten


@dataclasses.dataclass
class PlacedMask:
    node: fx.Node  # tensor read by the mask
    additive: bool
    attend_if: bool  # boolean masks: True = attend where node is True
    multiplier: float  # additive masks are multiplied by this first
    slot_axes: dict  # slot index -> axis of node along which the mask varies
    unit_axes: list  # axes of node the scores do not index (size 1, or read at index 0)
    slices: list  # (axis, length): the scores read only a prefix of that axis
    # node.view(split_shape) first where one axis of node holds several slots (a [B, Hq, Lq, S] mask over scores whose
    # heads are a KV head and a group: the axis split major to minor); the axes above are split_shape's. None: as is.
    split_shape: Optional[list] = None
    # Slots read through an axis of node that holds several (the query heads' axis read as KV head and group): a row
    # among them is a head of its group, not a query position.
    split_slots: frozenset = frozenset()


def _negligible(value: Optional[float], multiplier: float) -> bool:
    return value is not None and (value == -math.inf or value * multiplier <= NEGLIGIBLE_FILL)


def _unpadded(base: fx.Node, layout: Layout) -> Optional[tuple]:
    """constant_pad_nd(x, pad) padding only the ends of dims (efficient attention pads its bias to a multiple
    of 16), read only within x's sizes: read x instead."""
    if not is_call(base, aten.constant_pad_nd.default):
        return None
    inner = base.args[0]
    pad = list(base.args[1])
    sizes = list(fake_value(inner).shape)
    padded = {len(sizes) - 1 - index // 2 for index, amount in enumerate(pad) if amount != 0}
    if any(amount != 0 for amount in pad[0::2]):
        return None  # padding at the start would shift indices
    for dim in layout.dims:
        for piece in dim:
            if piece.axis in padded and not (known_equal(piece.step, 1) and isinstance(piece.size, int)
                                              and isinstance(sizes[piece.axis], int)
                                              and piece.size <= sizes[piece.axis]):
                return None
    return inner, Layout(layout.dims, tuple(sizes))


def normalize(use: MaskUse) -> tuple:
    """(node, additive, attend_if, C over node's axes)."""
    node, additive, attend_if, layout = use.node, use.additive, use.attend_if, use.c_over_mask
    while True:
        traced = trace(node)
        if traced is not None and traced.chain:
            composed = compose(layout, traced.layout)
            if composed is None:
                raise Decline(f"mask {node.name} is a view that cannot be followed",
                              fix="build the mask with views (view, unsqueeze, expand, slice) of a [B, S] or [B, 1, "
                                  "Lq, S] tensor", node=node)
            node, layout = traced.base, composed
            continue
        unpadded = _unpadded(node, layout)
        if unpadded is not None:
            node, layout = unpadded
            continue
        if additive and is_float_cast(node):
            node = node.args[0]
            continue
        if additive and is_call(node, aten.where.self):
            cond, when_true, when_false = node.args[:3]
            true_fill, false_fill = fill_value(when_true), fill_value(when_false)
            if true_fill == 0 and _negligible(false_fill, use.multiplier):
                flip = True
            elif false_fill == 0 and _negligible(true_fill, use.multiplier):
                flip = False
            else:
                break
            spread = broadcast_layout(list(fake_value(cond).shape), list(fake_value(node).shape))
            composed = None if spread is None else compose(layout, spread)
            if composed is None or fake_value(cond).dtype != torch.bool:
                break
            node, layout, additive, attend_if = cond, composed, False, flip
            continue
        break
    return node, additive, attend_if, layout


def place(use: MaskUse, c_over_slots: Layout, slots: list) -> PlacedMask:
    node, additive, attend_if, c_over_node = normalize(use)
    node_sizes = list(fake_value(node).shape)
    on_axis = {}  # axis of node -> [(slot index, the mask's piece)] of the slots read through it
    for dim in range(c_over_slots.rank):
        pairs = align(c_over_slots.dims[dim], c_over_node.dims[dim])
        if pairs is None:
            raise Decline(f"mask {node.name} does not line up with the scores",
                          fix="a mask broadcastable to the scores with one dim per score dim ([B, 1, Lq, S])", node=node)
        for atom in pairs:
            if atom.right is None:
                continue
            slot_piece, mask_piece = atom.left, atom.right
            slot = slots[slot_piece.axis]
            if not (known_equal(slot_piece.step, 1) and known_equal(slot_piece.size, slot.size)):
                raise Decline(f"mask {node.name} varies along part of a score dim",
                              fix="a mask that varies along whole batch, query and key dims ([B, 1, Lq, S])", node=node)
            on_axis.setdefault(mask_piece.axis, []).append((slot_piece.axis, mask_piece))
    split_sizes, split_slices = {}, {}  # axis of node -> the sizes it splits into (major to minor), their prefixes
    for axis, pieces in on_axis.items():
        pieces.sort(key=lambda entry: -size_hint(entry[1].step))
        if not known_equal(pieces[-1][1].step, 1):
            raise Decline(f"mask {node.name} is read with a stride along one of its dims",
                          fix="a mask whose dims are read whole or as a prefix: one for all heads ([B, 1, Lq, S]), one "
                              "per KV head (broadcast over its group) or one per query head ([B, Hq, Lq, S])",
                          node=node)
        if len(pieces) > 1:
            split_sizes[axis], split_slices[axis] = _split_of_axis([piece for _, piece in pieces], node_sizes[axis],
                                                                   node)
    # Axes of the split view: each axis of node, or the runs it splits into.
    first_axis, split_shape = {}, []
    for axis, size in enumerate(node_sizes):
        first_axis[axis] = len(split_shape)
        split_shape.extend(split_sizes.get(axis, [size]))
    slot_axes, slices = {}, []
    for axis, pieces in on_axis.items():
        for offset, (slot_index, piece) in enumerate(pieces):
            slot_axes[slot_index] = first_axis[axis] + offset
        if axis in split_slices:
            slices.extend((first_axis[axis] + offset, length) for offset, length in split_slices[axis])
        elif not known_equal(pieces[0][1].size, node_sizes[axis]):
            slices.append((first_axis[axis], pieces[0][1].size))  # e.g. HF's mask[..., :key_length]
    used = set(slot_axes.values())
    # Axes no score dim reads: size 1, or read at index 0 only (a length-1 prefix slice).
    unit_axes = [axis for axis in range(len(split_shape)) if axis not in used]
    split_slots = frozenset(slot for axis in split_sizes for slot, _ in on_axis[axis])
    return PlacedMask(node, additive, attend_if, use.multiplier if additive else 1.0, slot_axes, unit_axes, slices,
                      split_shape if split_sizes else None, split_slots)


def _split_of_axis(pieces: list, axis_size, node: fx.Node) -> tuple:
    """(sizes, prefixes) of the runs one axis of the mask splits into, major to minor, where `pieces` (one per slot,
    sorted by step, largest first, the last of step 1) read it as a row-major split of it, each run read as a prefix
    (a query-head axis read as KV head and group; a flat [.., Hq * S_max] mask viewed per head and sliced to S keys):
    prefixes are (offset among the runs, length read) where a run is not read whole. Views can make no other reading
    of one axis by several dims (as_strided, which could, is not followed)."""
    steps = [piece.step for piece in pieces]
    nested = all(isinstance(value, int) for value in [axis_size, *steps, *(piece.size for piece in pieces)]) and \
        not axis_size % steps[0] and not any(major % minor for major, minor in zip(steps, steps[1:]))
    sizes = [axis_size // steps[0]] + [major // minor for major, minor in zip(steps, steps[1:])] if nested else []
    if not nested or any(piece.size > size for piece, size in zip(pieces, sizes)):
        raise Decline(f"mask {node.name} varies along several score dims through one axis in a way that is not a split "
                      "of it", fix=UNEXPECTED_GRAPH, node=node)
    prefixes = [(offset, piece.size) for offset, (piece, size) in enumerate(zip(pieces, sizes)) if piece.size != size]
    return sizes, prefixes

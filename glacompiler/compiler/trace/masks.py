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

from ..decline import Decline
from .layout import Layout, fake_value, broadcast_layout, compose, trace
from .operands import is_call, is_float_cast
from .products import align
from .score_side import NEGLIGIBLE_FILL, MaskUse, fill_value
from .sizes import known_equal

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
    slot_axes, slices = {}, []
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
            if not known_equal(mask_piece.step, 1) or mask_piece.axis in slot_axes.values():
                raise Decline(f"mask {node.name} varies along several score dims through one axis (e.g. per query "
                              "head across KV groups), which the pass does not lay out",
                              fix="one mask for all heads ([B, 1, Lq, S]) or one per KV head (broadcast over its "
                                  "group)", node=node)
            slot_axes[slot_piece.axis] = mask_piece.axis
            if not known_equal(mask_piece.size, node_sizes[mask_piece.axis]):
                slices.append((mask_piece.axis, mask_piece.size))  # e.g. HF's mask[..., :key_length]
    used = set(slot_axes.values())
    # Axes no score dim reads: size 1, or read at index 0 only (a length-1 prefix slice).
    unit_axes = [axis for axis in range(len(node_sizes)) if axis not in used]
    return PlacedMask(node, additive, attend_if, use.multiplier if additive else 1.0, slot_axes, unit_axes, slices)

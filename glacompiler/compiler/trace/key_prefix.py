"""Boolean masks that provably allow, in every row, a prefix of the keys: the op can take them as lengths.

A decode step's mask usually hides the keys past each sequence's length: `arange(S) <= position`,
`arange(S) < lengths[:, None]`, or their negations under masked_fill. Given as a mask, the op reduces it to key
ranges (mask_key_range) and runs a dense and a sparse pass of its kernels; given as lengths (each row's count of
allowed keys), one maskless launch. The proof is by form, never by value: the mask is one comparison (through
logical or bitwise nots and views) between

- the key index: an arange with a positive step, reached through views, widening casts, shifts by terms
  constant along the keys and positive scales (_shifted says which), read along the mask's key axis by one run,
  every value on the way held in int64 or a float: the compared values rise, or stay level, along every row; they
  never wrap around (an int64 shift by a tensor is taken not to pass 2**63; numbers are checked) and never turn to
  nan (inf - inf, 0 * inf), and
- a bound: anything that does not vary along the key axis,

in the direction `key < bound` or `key <= bound` once nots and operand order are folded in. The allowed keys of
a row are then exactly those before some index, and the row's count of allowed keys is its length, whatever
the bound's values (negative, past the cache, fractional).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import fx

from .layout import Layout, broadcast_layout, compose, fake_value, identity, trace
from .masks import PlacedMask
from .operands import convert_dtypes, is_call, scalar_value

aten = torch.ops.aten
prims = torch.ops.prims

# comparison op -> its relation, written with the left operand first
_RELATIONS = {aten.lt.Tensor: "<", aten.le.Tensor: "<=", aten.gt.Tensor: ">", aten.ge.Tensor: ">=",
              aten.lt.Scalar: "<", aten.le.Scalar: "<=", aten.gt.Scalar: ">", aten.ge.Scalar: ">="}
_SWAPPED = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}  # b REL a  ==  a SWAPPED[REL] b
_NEGATED = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}
_NOTS = (aten.logical_not.default, aten.bitwise_not.default)
# Dtypes in which the key path's values are exact or rounded, never wrapped around (int64 shifts are taken not to
# pass 2**63); an int32 arange is let in where its last value is known to fit.
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_UNWRAPPED = (torch.int64, *_FLOATS)


def _through_views(node: fx.Node, layout: Layout) -> tuple:
    """(base, layout over it): node's producers followed through view-like ops."""
    traced = trace(node)
    if traced is None or not traced.chain:
        return node, layout
    composed = compose(layout, traced.layout)
    return (node, layout) if composed is None else (traced.base, composed)


# A bound on any tensor's length where it is symbolic (no device holds 2**40 elements of one tensor).
_MAX_LENGTH = 2**40


def _rising_range(node, int64_shifts: int) -> bool:
    """An arange (prims.iota after decomposition) whose values rise along its one axis and, shifted by at most
    int64_shifts in int64 on the way to the comparison, never wrap around."""
    if is_call(node, prims.iota.default):
        start, step = node.kwargs.get("start", 0), node.kwargs.get("step", 1)
    elif is_call(node, aten.arange.default):
        start, step = 0, 1
    elif is_call(node, aten.arange.start, aten.arange.start_step):
        start = node.args[0]
        step = node.args[2] if len(node.args) > 2 else node.kwargs.get("step", 1)
    else:
        return False
    value = fake_value(node)
    if (value is None or value.dim() != 1 or scalar_value(start) is None or scalar_value(step) is None
            or not 0 < step < math.inf):
        return False
    if value.dtype in _FLOATS:
        return math.isfinite(start)  # (finite keys to start from; the step is finite above)
    length = value.shape[0] if isinstance(value.shape[0], int) else _MAX_LENGTH
    if not (isinstance(start, int) and isinstance(step, int)):
        return False
    largest = max(abs(start), abs(start + step * (length - 1)))
    if value.dtype == torch.int32:
        return largest < 2**31 and isinstance(value.shape[0], int) and largest + int64_shifts < 2**63
    return value.dtype == torch.int64 and largest + int64_shifts < 2**63


def _shifted(node: fx.Node, layout: Layout, key_axis: int) -> Optional[tuple]:
    """(x, the mask's layout over x, the magnitude of a number added in int64) where node is x shifted or scaled
    so that it rises wherever x does (transformers adds its key offset to the key arange):
    - in int64, x plus or minus a Python int or an integer tensor constant along the keys (a tensor's values are
      taken not to bring the sum past 2**63; a number's magnitude is returned and checked at the arange);
    - in a float, x plus or minus a number finite in that float (a tensor could hold inf and make inf - inf = nan),
      or x times a number that is neither 0 nor inf in it."""
    if node.kwargs or len(node.args) != 2:
        return None
    a, b = node.args
    dtype = fake_value(node).dtype
    if is_call(node, aten.add.Tensor):
        pairs = ((a, b), (b, a))
    elif is_call(node, aten.sub.Tensor):
        pairs = ((a, b),)
    elif is_call(node, aten.mul.Tensor):
        pairs = tuple((x, c) for x, c in ((a, b), (b, a)) if scalar_value(c) is not None and dtype in _FLOATS
                      and torch.finfo(dtype).tiny <= c <= torch.finfo(dtype).max)
    else:
        return None
    for inner, other in pairs:
        if not isinstance(inner, fx.Node):
            continue
        inner_layout, other_layout = _operand_layout(inner, layout, node), _operand_layout(other, layout, node)
        if inner_layout is None or other_layout is None or not _constant_along_keys(other, other_layout, key_axis):
            continue
        if is_call(node, aten.mul.Tensor):
            return inner, inner_layout, 0
        if dtype == torch.int64 and isinstance(other, int) and not isinstance(other, bool):
            return inner, inner_layout, abs(other)
        if dtype == torch.int64 and isinstance(other, fx.Node) and not fake_value(other).dtype.is_floating_point:
            return inner, inner_layout, 0
        if dtype in _FLOATS and scalar_value(other) is not None and abs(other) <= torch.finfo(dtype).max:
            return inner, inner_layout, 0
    return None


def _key_index(operand, layout: Layout, key_axis: int) -> bool:
    """Whether operand, read by the mask through layout, rises along the mask's key axis in every row: an
    arange (affine, rising in its index) read along that axis by one run of positive step, through views,
    monotone casts and shifts (_shifted). Along other axes it may vary (each row is a prefix on its own)."""
    int64_shifts = 0
    while isinstance(operand, fx.Node):
        operand, layout = _through_views(operand, layout)
        value = fake_value(operand)
        if value is None or value.dtype not in _UNWRAPPED:
            break  # (an int32 arange is judged by _rising_range)
        dtypes = convert_dtypes(operand)
        if dtypes is not None and (dtypes[1] in _FLOATS or not (dtypes[0].is_floating_point or dtypes[0].is_complex)):
            operand = operand.args[0]  # to a float, or an integer to int64 (a cast keeps the shape: the layout holds)
            continue
        shifted = _shifted(operand, layout, key_axis)
        if shifted is None:
            break
        operand, layout, shift = shifted
        int64_shifts += shift
    if not _rising_range(operand, int64_shifts):
        return False
    key_pieces = layout.dims[key_axis]
    return len(key_pieces) == 1 and key_pieces[0].axis is not None


def _constant_along_keys(operand, layout: Layout, key_axis: int) -> bool:
    if not isinstance(operand, fx.Node):
        return scalar_value(operand) is not None
    return all(piece.axis is None for piece in layout.dims[key_axis])


def _operand_layout(operand, comparison_layout: Layout, comparison: fx.Node) -> Optional[Layout]:
    """The mask node's layout over a comparison operand (broadcast to the comparison's shape first)."""
    if not isinstance(operand, fx.Node):
        return comparison_layout
    value, out = fake_value(operand), fake_value(comparison)
    if value is None or out is None:
        return None
    spread = broadcast_layout(list(value.shape), list(out.shape))
    return None if spread is None else compose(comparison_layout, spread)


def is_key_prefix(mask: PlacedMask, key_slot: int) -> bool:
    """Whether the boolean mask allows, in each row, exactly the keys before some index (see the module)."""
    if mask.additive or key_slot not in mask.slot_axes:
        return False
    key_axis = mask.slot_axes[key_slot]
    node, attend_if = mask.node, mask.attend_if
    value = fake_value(node)
    if value is None:
        return False
    layout = identity(list(value.shape))  # the mask node over the node reached so far
    while True:
        if is_call(node, *_NOTS):
            node, attend_if = node.args[0], not attend_if
            continue
        base, composed = _through_views(node, layout)
        if base is node:
            break
        node, layout = base, composed
    relation = _RELATIONS.get(node.target) if isinstance(node, fx.Node) and node.op == "call_function" else None
    if relation is None or len(node.args) < 2:
        return False
    left, right = node.args[:2]
    for key_side, bound, relation_to_bound in ((left, right, relation), (right, left, _SWAPPED[relation])):
        key_layout = _operand_layout(key_side, layout, node)
        bound_layout = _operand_layout(bound, layout, node)
        if key_layout is None or bound_layout is None or not _key_index(key_side, key_layout, key_axis):
            continue
        if not attend_if:
            relation_to_bound = _NEGATED[relation_to_bound]
        return relation_to_bound in ("<", "<=") and _constant_along_keys(bound, bound_layout, key_axis)
    return False

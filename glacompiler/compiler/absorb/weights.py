"""The per-head weights of an absorbed site as views of the model's own weight (kv_b_proj's, or whatever
matrix the expansion multiplies by): W_UK [Hkv, Dn, c] and W_UV [Hkv, Dv, c], split out of the weight by a
reshape, slices at the parts' offsets and a permute. They are graph constants (parameters): Inductor
computes these views once per step at most, on the weight alone, never on the cache."""
from __future__ import annotations

import dataclasses

import torch
from torch import fx

from ..decline import Decline
from ..rewrite.emit import Emitter
from ..trace.layout import fake_value
from ..trace.sizes import is_concrete

aten = torch.ops.aten


@dataclasses.dataclass
class WeightView:
    """base.reshape(split_shape)[slices].squeeze(unit).permute(order), then broadcast and merged to shape."""

    base: fx.Node
    split_shape: list
    slices: list  # (dim, start, length)
    unit: list  # split dims read at one index only
    order: list  # remaining split dims in run order (None: a broadcast run, inserted with expand)
    run_sizes: list  # size of each run, in order
    shape: list  # the merged op shape


def weight_view(base: fx.Node, dims: list, offsets: tuple, what: str) -> WeightView:
    """dims: per dim of the result, the runs of base's axes (major to minor; axis None: broadcast)."""
    sizes = list(fake_value(base).shape)
    if not all(is_concrete(s) for s in sizes):
        raise Decline(f"the {what} weight has a symbolic size",
                      fix="a weight of fixed shape (an nn.Parameter, not a size that changes between calls)", node=base)
    runs = [run for dim in dims for run in dim]
    by_axis: dict = {}
    for index, run in enumerate(runs):
        if run.axis is not None:
            by_axis.setdefault(run.axis, []).append((index, run))
    split_shape, slices, unit, dim_of_run = [], [], [], {}
    for axis, size in enumerate(sizes):
        offset = offsets[axis]
        entries = sorted(by_axis.get(axis, []), key=lambda entry: -entry[1].step)
        bound = size
        for index, run in entries:
            if not is_concrete(run.step) or run.step <= 0 or bound % run.step:
                raise Decline(f"the {what} weight is read with a stride pattern that cannot be viewed",
                              fix="use the weight as stored (W or W.T viewed as [.., H, D]), not a strided slice of "
                                  "it or a view of part of a longer buffer", node=base)
            extent = bound // run.step
            digit = (offset // run.step) % extent
            if digit + run.size > extent:
                raise Decline(f"the {what} weight is read in runs that cross its blocks (a run of {run.size} "
                              f"starting {digit} into a block of {extent})",
                              fix="slice each head's part of the projection within that head's columns ([.., H, D]"
                                  "[..., a:b]), not across heads", node=base)
            if digit or run.size != extent:
                slices.append((len(split_shape), digit, run.size))
            dim_of_run[index] = len(split_shape)
            split_shape.append(extent)
            bound = run.step
        if bound > 1:  # the minor part of the axis that no run walks: read at one index
            slices.append((len(split_shape), offset % bound, 1))
            unit.append(len(split_shape))
            split_shape.append(bound)
    remaining = [d for d in range(len(split_shape)) if d not in unit]
    order = [remaining.index(dim_of_run[index]) if index in dim_of_run else None for index in range(len(runs))]
    shape = []
    for dim in dims:
        size = 1
        for run in dim:
            size *= run.size
        shape.append(size)
    return WeightView(base, split_shape, slices, unit, order, [run.size for run in runs], shape)


def build_weight(emit: Emitter, view: WeightView) -> fx.Node:
    node = emit.reshape(view.base, view.split_shape)
    for dim, start, length in view.slices:
        node = emit.call(aten.slice.Tensor, node, dim, start, start + length)
    if view.unit:
        node = emit.call(aten.squeeze.dims, node, list(view.unit))
    node = emit.permute(node, [d for d in view.order if d is not None])
    if any(d is None for d in view.order):
        for position, d in enumerate(view.order):
            if d is None:
                node = emit.call(aten.unsqueeze.default, node, position)
        node = emit.call(aten.expand.default, node, list(view.run_sizes))
    return emit.reshape(node, view.shape)

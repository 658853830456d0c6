"""The op's extension arguments (plan/extensions.py) as graph nodes: the soft cap, and [Hq] views of the sinks
and ALiBi slopes in the dtypes the op takes."""
from __future__ import annotations

import math

import torch
from torch import fx

from ..plan.extensions import ExtensionPlan, PerHeadPlan
from ..trace.layout import fake_value

aten = torch.ops.aten


def _per_head(emit, plan: PerHeadPlan, dtypes: tuple, factor: float = 1.0) -> fx.Node:
    from .emit import build_view  # emit.py imports this module

    node = build_view(emit, plan.view)
    if plan.broadcast:
        node = emit.call(aten.expand.default, node, emit.shape(plan.sizes))
    node = emit.reshape(node, [math.prod(plan.sizes)])
    if fake_value(node).dtype not in dtypes:
        node = emit.call(torch.ops.prims.convert_element_type.default, node, torch.float32)
    if factor != 1.0:
        node = emit.call(aten.mul.Tensor, node, factor)
    if fake_value(node).stride()[-1] != 1:
        node = emit.call(aten.clone.default, node, memory_format=torch.contiguous_format)
    return node


def build_extension_arguments(emit, extensions: ExtensionPlan, q: fx.Node) -> tuple:
    """(softcap, alibi_slopes, sinks, window_left, window_right): the op's arguments after kv_range."""
    sinks = None if extensions.sinks is None else _per_head(emit, extensions.sinks, (torch.float32, fake_value(q).dtype))
    alibi = None
    if extensions.alibi is not None:
        alibi = _per_head(emit, extensions.alibi, (torch.float32,), extensions.alibi_factor)
    return float(extensions.softcap), alibi, sinks, -1, -1

"""The op's extension arguments (plan/extensions.py) as graph nodes: the soft cap, and [Hq] views of the sinks
and ALiBi slopes in the dtypes the op takes; and a scale tensor of the scores folded into q."""
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


def scale_queries(emit, extensions: ExtensionPlan, queries: list) -> list:
    """The op's query operands ([B, Lq, Hq, D], None where absent) times the site's scale tensor per query head
    (over it where the site divides), computed in at least float32 and stored in each query's dtype: the scores
    (t q) . k are t (q . k), for the latent and the rope part alike."""
    per_head = _per_head(emit, extensions.score_scale, (torch.float32, torch.float64))
    if extensions.score_scale_divides:
        per_head = emit.call(aten.reciprocal.default, per_head)
    per_head = emit.call(aten.view.default, per_head, [1, 1, math.prod(extensions.score_scale.sizes), 1])
    scaled = []
    for query in queries:
        if query is None:
            scaled.append(None)
            continue
        dtype = fake_value(query).dtype
        wide = torch.promote_types(dtype, torch.float32)
        product = emit.call(aten.mul.Tensor, emit.call(torch.ops.prims.convert_element_type.default, query, wide),
                            per_head)
        scaled.append(emit.call(torch.ops.prims.convert_element_type.default, product, dtype))
    return scaled

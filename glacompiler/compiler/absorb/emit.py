"""Emit an absorbed site: per step, W_UK folded into the new tokens' query (one small batched product per
KV head), the op on the latent cache itself (K = V = latent, plus the shared rope key), and W_UV applied to
the op's latent output. Nothing reads the expanded K and V any more: their product over the whole cache
and the per-head copies die with the old site."""
from __future__ import annotations

import torch
from torch import fx

from ..rewrite.emit import Emitter, SharedMaskRanges, build_query, build_view, emit_op_call, place_output
from ..trace.layout import fake_value
from .plan import AbsorbedPlan
from .weights import build_weight

aten = torch.ops.aten


def _channels(emit: Emitter, node: fx.Node, window: tuple) -> fx.Node:
    start, length = window
    if start == 0 and length == fake_value(node).shape[-1]:
        return node
    return emit.call(aten.slice.Tensor, node, 3, start, start + length)


def per_head_product(emit: Emitter, x: fx.Node, weight: fx.Node, kv_heads: int, groups: int) -> fx.Node:
    """x [B, L, Hq, K] times weight [Hkv, K, N] for each query head's KV head (h // groups): [B, L, Hq, N]."""
    batch, length, heads, inner = fake_value(x).shape
    outer = fake_value(weight).shape[2]
    rows = emit.reshape(x, [batch, length, kv_heads, groups, inner])
    rows = emit.permute(rows, [2, 0, 1, 3, 4])
    rows = emit.call(aten.reshape.default, rows, [kv_heads, -1, inner])
    out = emit.call(aten.bmm.default, rows, weight)
    out = emit.call(aten.reshape.default, out, [kv_heads, -1, emit.size(length), groups, outer])
    out = emit.permute(out, [1, 2, 0, 3, 4])
    out = emit.call(aten.reshape.default, out, [-1, emit.size(length), heads, outer])
    return emit.call(aten.clone.default, out, memory_format=torch.contiguous_format)


def emit_absorbed(graph: fx.Graph, absorbed: AbsorbedPlan, mask_ranges: SharedMaskRanges) -> list:
    site = absorbed.site
    emit = Emitter(graph, site.anchor)
    q = build_query(emit, site.q)
    w_uk = build_weight(emit, absorbed.w_uk)  # [Hkv, Dn, c]
    q_latent = per_head_product(emit, _channels(emit, q, absorbed.nope_window), w_uk, absorbed.kv_heads,
                                absorbed.groups)
    if absorbed.rope is not None:
        q_rope = _channels(emit, q, absorbed.rope_window)
        if fake_value(q_rope).stride()[-1] != 1:
            q_rope = emit.call(aten.clone.default, q_rope, memory_format=torch.contiguous_format)
        k_rope = build_view(emit, absorbed.rope)
    elif site.q_rope is not None:
        q_rope, k_rope = build_query(emit, site.q_rope), build_view(emit, site.k_rope)
    else:
        q_rope = k_rope = None
    latent = build_view(emit, absorbed.latent)
    out = emit_op_call(emit, site, mask_ranges, q_latent, latent, None, q_rope, k_rope)  # [B, Lq, Hq, c]
    w_uv = emit.permute(build_weight(emit, absorbed.w_uv), [0, 2, 1])  # [Hkv, c, Dv]
    out = per_head_product(emit, out, w_uv, absorbed.kv_heads, absorbed.groups)
    place_output(emit, site, out)
    return emit.created


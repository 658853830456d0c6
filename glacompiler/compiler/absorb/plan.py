"""A decode site whose K and V are per-head linear maps of one tensor (the latent), planned as the absorbed
MLA/GLA op call: check the expansion exactly (expansion.py, latent.py), split the weights (weights.py), and
say what the op reads.

The site is first planned as it is written (the expanded form: plan/), which gives the query, the masks, the
scale and the output layout; absorption swaps the key and value sides:
    K[b, s, h, :Dn] = L[b, s, g(h), :] @ W_UK[h]^T,  K[b, s, h, Dn:] = R[b, s, :] (rope key, optional),
    V[b, s, h, :]   = L[b, s, g(h), :] @ W_UV[h]^T
    =>  q_abs[b, l, h] = q[b, l, h, :Dn] @ W_UK[h],   out[b, l, h] = attend(q_abs, L; q_rope, R) @ W_UV[h]^T
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ...op.validation import validate_inputs
from ...spec import AttentionSpec
from ..decline import UNEXPECTED_GRAPH, Decline
from ..plan.match import plan_sdpa_site, plan_softmax_site
from ..plan.site_plan import SitePlan, TensorPlan, cache_plan, slots_size
from ..find.sdpa import read_sdpa
from ..trace.layout import Layout, Piece, fake_value, regroup, merge_adjacent, view_layout
from ..trace.operands import is_call
from ..trace.score_side import PRODUCT_OPS
from ..trace.sizes import known_equal, size_hint
from .expansion import split_parts
from .latent import BATCH, DIM, HEAD, KEY, is_product, linear_map
from .locate import at_origin
from .weights import WeightView, weight_view


class NotLatent(Exception):
    """The site's K and V are not computed by products: nothing to absorb (no note in the report)."""


@dataclasses.dataclass
class AbsorbedPlan:
    site: SitePlan  # the site as written: query, masks, scale, output
    spec: AttentionSpec  # the absorbed op's (mla / gla)
    nope_window: tuple  # (start, length) of the query's channels that meet W_UK
    rope_window: Optional[tuple]  # (start, length) of the query's rope channels when K carries the rope key
    rope: Optional[TensorPlan]  # the rope key cache [B, S, Dr] read from K's rope part
    latent: TensorPlan  # [B, S, G, c]
    w_uk: WeightView  # [Hkv, Dn, c]
    w_uv: WeightView  # [Hkv, Dv, c]
    kv_heads: int  # heads of the expanded K and V
    groups: int  # query heads per expanded KV head


def tensor_plan_layout(plan: TensorPlan) -> Layout:
    """The op-order tensor that plan/'s TensorPlan builds, as a Layout over its base."""
    base_sizes = list(fake_value(plan.base).shape)
    sizes = list(base_sizes)
    for axis, length in plan.prefixes:  # (a prefix keeps its axis and steps: the pieces below index the base)
        sizes[axis] = length
    layout = view_layout(sizes, plan.split_shape)
    dims = list(layout.dims)
    for dim, length in plan.slices:
        piece = dims[dim][0]
        dims[dim] = () if known_equal(length, 1) else (Piece(piece.axis, length, piece.step),)
    dims = [dim for index, dim in enumerate(dims) if index not in plan.squeeze]
    dims = [dims[index] for index in plan.order]
    for position in plan.unsqueeze:
        dims.insert(position, ())
    if plan.merged_shape is not None:
        grouped = regroup([p for dim in dims for p in dim], plan.merged_shape)
        dims = [merge_adjacent(dim) for dim in grouped]
    return Layout(tuple(dims), tuple(base_sizes))


def expanded_plan(site) -> SitePlan:
    """The site planned with its key whole (a concatenated key is one tensor here: its parts are read by
    expansion.py)."""
    if site.softmax is not None:
        return plan_softmax_site(site.softmax, split_cat=False)
    return plan_sdpa_site(read_sdpa(site.sdpa_node), split_cat=False)


def plan_absorption(site) -> AbsorbedPlan:
    """The absorbed plan, Decline (a latent expansion that is not matched exactly: the reason) or NotLatent."""
    try:
        plan = expanded_plan(site)
    except Decline:
        raise NotLatent() from None
    if plan.v is None:
        raise NotLatent()
    key_parts = split_parts(at_origin(plan.k.base, tensor_plan_layout(plan.k)), DIM)
    value_parts = split_parts(at_origin(plan.v.base, tensor_plan_layout(plan.v)), DIM)
    value_map = _value_map(value_parts)
    if not any(is_product(part.source) for part in key_parts + value_parts) or \
            (not isinstance(value_map, Decline) and _is_layer_input(plan, value_map.latent)):
        raise NotLatent()
    try:
        return _absorb(plan, key_parts, value_map)
    except Decline as decline:
        decline.spec = plan.spec
        raise


def _value_map(value_parts: list):
    """V's linear map of its latent, or the Decline that says why V is not one (raised by _absorb: an ordinary
    layer's V is told apart first, with the map)."""
    if len(value_parts) != 1 or not is_product(value_parts[0].source):
        return Decline("V is not one product of the latent",
                       fix="compute V as one linear map of the cached latent (latent @ W_UV, per head)")
    try:
        return linear_map(value_parts[0].source, "value")
    except Decline as decline:
        return decline


def _is_layer_input(plan: SitePlan, latent, budget: int = 4000) -> bool:
    """Whether V's latent is the tensor the query is projected from: an ordinary layer's V = x @ W_V over its input
    (a prompt's step computes q, K and V from x), not a latent expansion, whose latent is a cache or a projection
    of its own. Absorbing would attend over x, and the report would call an MHA/GQA layer a latent one. The walk
    from q crosses one product (q's projection): an earlier layer's output reaches q through its own projections,
    so a latent that also fed an earlier layer does not count."""
    stack, seen = [(plan.q.view.base, False)], set()
    while stack and len(seen) < budget:
        node, crossed = stack.pop()
        if node is latent:
            return True
        if node in seen:
            continue
        seen.add(node)
        product = is_call(node, *PRODUCT_OPS)
        if product and crossed:
            continue
        stack.extend((source, crossed or product) for source in node.all_input_nodes)
    return False


def _absorb(plan: SitePlan, key_parts: list, value_map) -> AbsorbedPlan:
    extensions = plan.extensions
    if extensions is not None and (extensions.softcap or extensions.alibi is not None):
        # Scores of the latent form are sums over latent channels: the op's latent kernels take sinks only.
        raise Decline("soft capping or ALiBi on a latent expansion (the latent kernels take sinks only; "
                      "the site stays expanded)",
                      fix="nothing: the latent kernels take sinks only, so soft-capped or ALiBi attention keeps the "
                          "expanded form (still fused)")
    if isinstance(value_map, Decline):
        raise value_map
    linear = [part for part in key_parts if is_product(part.source)]
    if not linear:
        computed = ", ".join(sorted({str(part.source.base.target) for part in key_parts}))
        raise Decline(f"K is not a product of the latent (it is computed by {computed})",
                      fix="compute K (or its part besides one shared rope key) as a linear map of the cached latent "
                          "(latent @ W_UK, per head)")
    if len(linear) > 1:
        raise Decline(f"K is joined from {len(linear)} products (one linear map of the latent expected)",
                      fix="compute K's latent part with one product (one kv_b_proj over the latent), joined to at "
                          "most one shared rope key")
    key_map = linear_map(linear[0].source, "key")
    if not key_map.same_latent(value_map):
        raise Decline("K and V are maps of different latents", fix="compute K and V from the same cached latent tensor")
    ropes = [part for part in key_parts if part is not linear[0]]
    if len(ropes) + (plan.k_rope is not None) > 1:
        raise Decline("K has more than one part besides the latent map (at most one shared rope key)",
                      fix="K = [latent @ W_UK, one rope key shared by all heads] at most")
    rope = rope_window = None
    if ropes:
        rope, rope_window = _rope_part(ropes[0]), (ropes[0].start, ropes[0].length)
    latent = cache_plan(key_map.latent, key_map.latent_runs, "latent cache")
    latent_heads = 1
    for run in key_map.latent_runs[2]:
        latent_heads *= run.size
    latent_dim = key_map.latent_runs[3][0].size
    rope_dim = rope_window[1] if rope_window else plan.spec.rope_dim
    dtype = plan.spec.torch_dtype
    for node, what in ((key_map.latent, "latent"), (key_map.weight, "key weight"), (value_map.weight, "value weight")):
        if fake_value(node).dtype != dtype:
            raise Decline(f"the {what} is {fake_value(node).dtype}, the query {dtype}",
                          fix="keep the latent cache and the kv_b_proj weight in the query's dtype", node=node)
    w_uk = weight_view(key_map.weight, key_map.weight_runs, key_map.weight_offsets, "key")
    w_uv = weight_view(value_map.weight, value_map.weight_runs, value_map.weight_offsets, "value")
    spec = AttentionSpec.latent(plan.spec.num_q_heads, latent_heads, latent_dim, rope_dim, dtype=plan.spec.dtype)
    absorbed = AbsorbedPlan(plan, spec, (linear[0].start, linear[0].length), rope_window, rope, latent, w_uk, w_uv,
                            plan.spec.num_kv_heads, plan.spec.num_q_heads // plan.spec.num_kv_heads)
    _validate(absorbed)
    return absorbed


def _rope_part(part) -> TensorPlan:
    """K's channels that are one key per token shared by every head (the rope key), as the op's [B, S, Dr]."""
    source = part.source
    dims = source.layout.dims
    if any(source.offsets):
        raise Decline("the rope key is read at an offset of its tensor",
                      fix="cache the rope key in a tensor of its own, or first in the cached tensor", node=source.base)
    if any(piece.axis is not None for piece in dims[HEAD]):
        raise Decline("K's part besides the latent map varies across heads (not one shared rope key)",
                      fix="one rope key shared by all heads ([B, S, 1, Dr] expanded over the heads)", node=source.base)
    if len(dims[DIM]) != 1 or any(piece.axis is None for piece in dims[BATCH] + dims[KEY] + dims[DIM]):
        raise Decline("the rope key is broadcast along the batch, the key position or its channels",
                      fix="a rope key cached per sequence and position ([B, S, Dr])", node=source.base)
    return cache_plan(source.base, [list(dims[BATCH]), list(dims[KEY]), list(dims[DIM])], "rope key cache")


def _meta(shape, dtype) -> torch.Tensor:
    hinted = [size_hint(s) for s in shape]
    if any(h is None for h in hinted):
        raise Decline("a size has no example value", fix=UNEXPECTED_GRAPH)
    return torch.empty(hinted, dtype=dtype, device="meta")


def _validate(absorbed: AbsorbedPlan) -> None:
    """The op's own argument checks on the absorbed shapes."""
    plan, spec = absorbed.site, absorbed.spec
    batch = slots_size(plan.slots, plan.roles.batch)
    dtype = spec.torch_dtype
    q = _meta([batch, plan.query_len, spec.num_q_heads, spec.head_dim_q], dtype)
    k = _meta([batch, plan.key_len, spec.num_kv_heads, spec.head_dim_k], dtype)
    q_rope = k_rope = None
    if spec.rope_dim:
        q_rope = _meta([batch, plan.query_len, spec.num_q_heads, spec.rope_dim], dtype)
        k_rope = _meta([batch, plan.key_len, spec.rope_dim], dtype)
    mask = _meta([batch, 1, plan.query_len, plan.key_len], torch.bool) if plan.masks or plan.causal_top_left else None
    try:
        validate_inputs(q, k, None, q_rope, k_rope, None, None, mask, plan.scale, None)
    except (ValueError, TypeError) as error:
        raise Decline(f"the absorbed form is unsupported by the op: {error}",
                      fix="latent and rope dims the latent kernels take (README, 'The op')") from None

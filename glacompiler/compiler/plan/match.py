"""A found site matched against the op's math: its q.k terms, the score tensor's slots, the masks and the
value side are traced, roles chosen, and the result handed to make_plan. Hand-written attention (from its
softmax) and SDPA calls both end in the same SitePlan; anything else raises Decline with the reason."""
from __future__ import annotations

import math

import torch

from ..decline import UNEXPECTED_GRAPH, Decline
from ..find.sdpa import SdpaCall
from ..find.softmax import SoftmaxMatch, scores_used_only_by_softmax
from ..trace.layout import Layout, Piece, broadcast_layout, fake_value, view_layout
from ..trace.masks import place
from ..trace.operands import Operand, walk_operand
from ..trace.score_mods import peel_sinks
from ..trace.score_side import MaskUse, walk_scores
from .extensions import per_head_slots, plan_extensions
from ..trace.sizes import is_concrete, known_equal, product, size_hint
from ..trace.slots import assign_roles, build_slots, slot_space, terms_from_operands, terms_from_product
from ..trace.value_side import ValueSide, analyze_values, values_of_product
from .site_plan import SitePlan, check_scales, choose_roles, is_tied, make_plan


def _check_owned(nodes: list, owners: set, what: str) -> None:
    for node in nodes:
        for user in node.users:
            if user not in owners:
                raise Decline(f"{what} {node.name} is also used by {user.name} (an intermediate is used elsewhere)",
                              fix=f"use the {what.split()[0]}s only inside the attention", node=user)


def masked_slots(placed: list) -> frozenset:
    """The slots some placed mask varies along."""
    return frozenset(index for mask in placed for index in mask.slot_axes)


def plan_softmax_site(match: SoftmaxMatch, split_cat: bool = True) -> SitePlan:
    if not scores_used_only_by_softmax(match):
        others = [u.name for u in match.input.users if u not in set(match.nodes)]
        raise Decline(f"the scores are also used by {', '.join(others)} (an intermediate is used elsewhere)",
                      fix="use the scores only for the softmax",
                      node=next(u for u in match.input.users if u not in set(match.nodes)))
    sinks = peel_sinks(match.input, match.output, match.dim)  # GPT-OSS: a sink column joined to the scores
    scores = match.input if sinks is None else sinks.scores
    walk = walk_scores(scores)
    if sinks is not None:
        walk.mods.sinks = sinks.sinks
    owners = set(walk.chain) | {scores} | set(match.nodes) | set(sinks.nodes if sinks else ())
    _check_owned(walk.chain, owners, "score node")
    _check_owned([n for n in match.nodes if n is not match.output], owners, "softmax node")
    terms = [term for raw in walk.terms for term in terms_from_product(raw, split_cat)]
    rank = fake_value(scores).dim()
    slots = build_slots(terms, rank)
    assign_roles(slots, match.dim)
    c_over_slots = slot_space(slots, rank)
    placed = [place(use, c_over_slots, slots) for use in walk.masks]
    # Rows a mask tells apart are query positions, but for a mask read per query head (its heads' axis split into KV
    # head and group): those rows are the group's heads.
    positions = {index for mask in placed for index in mask.slot_axes
                 if slots[index].role == "row" and index not in mask.split_slots}
    roles, main, rope = choose_roles(slots, terms, positions, rank,
                                     frozenset(per_head_slots(walk.mods, c_over_slots, slots)), masked_slots(placed))
    values = values_of_product(match.output, slots, c_over_slots)
    main, rope = _settle_main(terms, slots, roles, values, main, rope)
    owned = [scores] + walk.chain + match.nodes + values.chain + [values.output] + (sinks.nodes if sinks else [])
    plan = make_plan(match.form, terms, slots, roles, main, rope, values, placed, False,
                     check_scales(terms), values.output, owned)
    plan.extensions = plan_extensions(walk.mods, plan, c_over_slots)
    return plan


def _settle_main(terms, slots, roles, values: ValueSide, main, rope) -> tuple:
    """Two terms with the same head structure (MLA: one latent head): the main one is V's tensor."""
    if main is not None or len(terms) == 1:
        return main, rope
    tied = [t for t, term in enumerate(terms) if is_tied(term, t, slots, roles, values)]
    if len(tied) == 1:
        return tied[0], 1 - tied[0]
    sizes = [term.q_contraction.size for term in terms]
    if not all(is_concrete(s) for s in sizes) or sizes[0] == sizes[1]:
        raise Decline("cannot tell the latent score term from the rope term",
                      fix="give the latent and rope parts different head dims, or take V from the latent so that the "
                          "tied part is known")
    main = 0 if sizes[0] > sizes[1] else 1
    return main, 1 - main


def _sdpa_query(q: Operand) -> Operand:
    """SDPA's [*batch, H, L, E] query as the left operand [b, m, k] of a product."""
    dims = q.layout.dims
    return Operand(q.base, Layout((sum(dims[:-2], ()), dims[-2], dims[-1]), q.layout.base_sizes), q.factor, q.nodes)


def _sdpa_key_value(kv: Operand, groups: int, is_key: bool) -> Operand:
    """SDPA's [*batch, Hkv, S, E] key (as [b, E, S]) or value (as [b, S, Ev]): the right operand of a
    product. With GQA the KV heads gain a broadcast run of the group size (query head h reads KV head
    h // groups)."""
    dims = kv.layout.dims
    batch = sum(dims[:-3], ()) + dims[-3] + ((Piece(None, groups),) if groups > 1 else ())
    inner = (dims[-1], dims[-2]) if is_key else (dims[-2], dims[-1])
    return Operand(kv.base, Layout((batch,) + inner, kv.layout.base_sizes), kv.factor, kv.nodes)


def _same_key_length(key_len, value_len) -> None:
    """SDPA needs K and V of one length, but its CPU kernels' meta functions do not check it, so dynamo may
    give a growing cache's K and V two symbols. The call fails unless they are equal: state that (a guard, as
    the user's own graph requires it) so that the pass sees one key length."""
    if known_equal(key_len, value_len):
        return
    if size_hint(key_len) is None or size_hint(key_len) != size_hint(value_len) or not bool(key_len == value_len):
        raise Decline(f"SDPA's key and value lengths differ ({key_len} and {value_len})",
                      fix="key and value caches of one length")


def plan_sdpa_site(call: SdpaCall, split_cat: bool = True) -> SitePlan:
    q_val, k_val, v_val = fake_value(call.query), fake_value(call.key), fake_value(call.value)
    if not (q_val.dim() == k_val.dim() == v_val.dim() and q_val.dim() >= 3):
        raise Decline("SDPA operands without a head dim", fix="q, k and v as [B, H, L, D] (SDPA with a head dim)")
    q_heads, kv_heads, head_dim = q_val.shape[-3], k_val.shape[-3], q_val.shape[-1]
    if not (is_concrete(q_heads) and is_concrete(kv_heads) and is_concrete(head_dim)):
        raise Decline("SDPA heads or head dim are symbolic",
                      fix="fixed head counts and head dims (dynamo marks a size dynamic after it changes)")
    if q_heads % kv_heads != 0:
        raise Decline(f"SDPA query heads ({q_heads}) are not a multiple of KV heads ({kv_heads})",
                      fix="query heads a multiple of the KV heads")
    groups = q_heads // kv_heads
    _same_key_length(k_val.shape[-2], v_val.shape[-2])
    q = _sdpa_query(walk_operand(call.query, allow_scale=True))
    k = _sdpa_key_value(walk_operand(call.key, allow_scale=True), groups, is_key=True)
    v = _sdpa_key_value(walk_operand(call.value, allow_scale=False), groups, is_key=False)
    scores_shape = list(q_val.shape[:-1]) + [k_val.shape[-2]]
    c_over_product = view_layout([product(list(q_val.shape[:-2])), q_val.shape[-2], k_val.shape[-2]], scores_shape)
    if c_over_product is None:
        raise Decline("the SDPA scores cannot be related to a batched product", fix=UNEXPECTED_GRAPH)
    sdpa_scale = call.scale if call.scale is not None else 1.0 / math.sqrt(head_dim)
    terms = terms_from_operands(sdpa_scale, c_over_product, q, k, split_cat)
    rank = len(scores_shape)
    slots = build_slots(terms, rank)
    assign_roles(slots, rank - 1)
    c_over_slots = slot_space(slots, rank)
    placed = []
    if call.mask is not None:
        mask_val = fake_value(call.mask)
        spread = broadcast_layout(list(mask_val.shape), scores_shape)
        if spread is None:
            raise Decline(f"the SDPA mask of shape {tuple(mask_val.shape)} does not broadcast to the scores of shape "
                          f"{tuple(scores_shape)}", fix="a mask broadcastable to [B, 1, Lq, S]", node=call.mask)
        use = MaskUse(node=call.mask, additive=mask_val.dtype != torch.bool, attend_if=True, c_over_mask=spread,
                      multiplier=1.0)
        placed.append(place(use, c_over_slots, slots))
    # SDPA fixes which dim holds the query positions: [*batch, H, L, S].
    positions = {i for i, s in enumerate(slots) if s.dim == rank - 2 and s.role == "row"}
    roles, main, rope = choose_roles(slots, terms, positions, rank, masked=masked_slots(placed))
    dims = c_over_slots.dims
    probabilities = Layout((sum(dims[:-2], ()), dims[-2], dims[-1]), c_over_slots.base_sizes)
    values = analyze_values(probabilities, v, slots, call.output, [])
    main, rope = _settle_main(terms, slots, roles, values, main, rope)
    return make_plan(call.form, terms, slots, roles, main, rope, values, placed, call.is_causal,
                     check_scales(terms), call.node, [call.output, call.node])

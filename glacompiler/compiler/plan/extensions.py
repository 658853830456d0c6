"""FlashAttention's extensions found on a site (trace/score_mods.py) as the op's arguments: the soft cap, and
views of the graph's per-head tensors in the op's query-head order ([Hq]: KV head major, group minor) for the
sinks and the ALiBi slopes. A scale tensor of the scores (0-d, or per head) is planned the same way; the op takes
its scale as a number, so rewrite/extensions.py multiplies q by it ((t q) . k = t (q . k), per query head)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..decline import Decline
from ..trace.layout import Layout
from ..trace.products import align
from ..trace.score_mods import PerHeadTensor, ScoreMods
from ..trace.sizes import known_equal, known_one
from .site_plan import SitePlan, TensorPlan, tensor_plan


@dataclasses.dataclass
class PerHeadPlan:
    """A tensor viewed as [slot sizes of the query heads] (size 1 where it is the same for every row of a slot,
    e.g. the query tokens that share a mask and are packed as heads), expanded to them, flattened to [Hq]."""

    view: TensorPlan
    sizes: list
    broadcast: bool  # some slot is expanded


@dataclasses.dataclass
class ExtensionPlan:
    softcap: float
    sinks: Optional[PerHeadPlan]
    alibi: Optional[PerHeadPlan]
    alibi_factor: float  # the slopes are the tensor times this
    score_scale: Optional[PerHeadPlan] = None  # q is multiplied by it (divided where score_scale_divides)
    score_scale_divides: bool = False


def _per_head_fix(what: str) -> str:
    return f"{what} given per query head ([Hq], broadcast as [1, Hq, 1, 1] over the scores)"


# The ALiBi positions are not per head: what lets them fuse is their own form.
ALIBI_POSITIONS_FIX = "ALiBi key positions as one [S] range along the key dim (slope[h] * arange(S), BLOOM's form)"


def _slot_pieces(layout: Layout, c_over_slots: Layout, slots: list, what: str, fix: str = "") -> dict:
    """Slot index -> run of the tensor's base, for the slots along which the tensor varies (whole slots only).
    fix: what the reason says would let the site fuse (default: the tensor given per query head)."""
    pieces = {}
    for dim in range(c_over_slots.rank):
        atoms = align(c_over_slots.dims[dim], layout.dims[dim])
        if atoms is None:
            raise Decline(f"the {what} do not line up with the scores", fix=fix or _per_head_fix(what))
        for atom in atoms:
            if atom.right is None:
                continue
            slot = slots[atom.left.axis]
            if not (known_equal(atom.left.step, 1) and known_equal(atom.left.size, slot.size)):
                raise Decline(f"the {what} vary along part of a score dim", fix=fix or _per_head_fix(what))
            pieces[atom.left.axis] = atom.right
    return pieces


def per_head_slots(mods: ScoreMods, c_over_slots: Layout, slots: list) -> set:
    """The slots along which the site's sinks or ALiBi slopes vary: heads, for choose_roles, where a batch of 1 leaves
    one paired dim that could be either (a per-head tensor does not vary along the batch)."""
    varying = set()
    for tensor in (mods.sinks, mods.alibi, mods.score_scale):
        if tensor is not None:
            try:
                varying.update(_slot_pieces(tensor.c_over_node, c_over_slots, slots, "per-head tensor"))
            except Decline:
                pass  # (plan_extensions gives the reason)
    return varying


def per_head_plan(tensor: PerHeadTensor, c_over_slots: Layout, slots: list, roles, what: str) -> PerHeadPlan:
    """The tensor as [Hq] in the op's head order: it may vary per query head (KV head and group slots), nothing
    else."""
    pieces = _slot_pieces(tensor.c_over_node, c_over_slots, slots, what)
    heads = roles.head + roles.groups
    others = [slots[i].role for i in pieces if i not in heads]
    if others:
        raise Decline(f"the {what} vary along the {others[0]} dim, not per head only",
                      fix=f"{what} that depend on the query head only ([Hq], broadcast as [1, Hq, 1, "
                          "1])", node=tensor.node)
    view = tensor_plan(tensor.node, [pieces.get(i) for i in heads], what)
    broadcast = any(i not in pieces and not known_one(slots[i].size) for i in heads)
    return PerHeadPlan(view, [slots[i].size for i in heads], broadcast)


def describe_extensions(plan: SitePlan) -> str:
    """What the report adds to a rewritten site's form: the extensions its op call uses."""
    extensions = plan.extensions
    if extensions is None:
        return ""
    used = [name for name, on in (("softcap", extensions.softcap), ("alibi", extensions.alibi is not None),
                                  ("sinks", extensions.sinks is not None),
                                  ("scale tensor", extensions.score_scale is not None)) if on]
    return "".join(f" +{name}" for name in used)


def plan_extensions(mods: ScoreMods, plan: SitePlan, c_over_slots: Layout) -> Optional[ExtensionPlan]:
    """The op's extension arguments for a planned site, or None where it uses none; Decline where the op cannot
    take them."""
    if not mods.any:
        return None
    try:
        latent = plan.spec.kind in ("mla", "gla")
        if latent and (mods.softcap or mods.alibi is not None):
            raise Decline("soft capping or ALiBi on a latent (MLA/GLA) layout: the op does not take them there",
                          fix="nothing: the op's latent kernels take neither (no MLA/GLA model uses them); the site "
                              "stays with Inductor")
        slots, roles = plan.slots, plan.roles
        sinks = alibi = None
        if mods.sinks is not None:
            sinks = per_head_plan(mods.sinks, c_over_slots, slots, roles, "sinks")
        if mods.alibi is not None:
            if mods.sinks is not None:
                raise Decline("ALiBi with sinks: the op's -slope * |query - key| equals the model's slope * key "
                              "position only up to a constant per row, which the softmax drops but a sink's logit "
                              "does not", fix="nothing: no model combines them; the site stays with Inductor")
            if not known_equal(plan.query_len, 1):
                raise Decline("ALiBi with several query tokens per sequence: the op's |query - key| distance "
                              "equals the model's key-position bias only for one",
                              fix="decode one token per step (query length 1); longer steps stay with Inductor")
            positions = _slot_pieces(mods.alibi_positions, c_over_slots, slots, "ALiBi key positions",
                                     ALIBI_POSITIONS_FIX)
            if list(positions) != [roles.key] or not known_equal(positions[roles.key].step, 1):
                raise Decline("the ALiBi bias is not one slope per head times the key position",
                              fix="an ALiBi bias of slope[h] * key_position (BLOOM's form), added to the scores")
            alibi = per_head_plan(mods.alibi, c_over_slots, slots, roles, "ALiBi slopes")
        score_scale = None
        if mods.score_scale is not None:
            if plan.spec.dtype == "float16" and mods.score_scale_dtype != torch.float16:
                raise Decline(f"float16 scores scaled by a tensor in {mods.score_scale_dtype}: folded into q, the "
                              "product would be stored in float16, which can overflow where the model's does not",
                              fix="scale in float16 (the scale tensor and the scores both float16), or run the "
                                  "model in bfloat16", node=mods.score_scale.node)
            score_scale = per_head_plan(mods.score_scale, c_over_slots, slots, roles, "per-head scales")
        return ExtensionPlan(mods.softcap, sinks, alibi, mods.alibi.factor if mods.alibi is not None else 1.0,
                             score_scale, mods.score_scale_divides)
    except Decline as decline:
        decline.spec = plan.spec
        raise

"""From a softmax's input back to the q.k products, collecting the scale and the masks on the way.

Ops allowed between the products and the softmax (anything else declines the site):

| op                                        | meaning                                                        |
|-------------------------------------------|----------------------------------------------------------------|
| view-like (view, permute, expand, ...)    | re-indexing, tracked exactly (layout.py)                       |
| convert_element_type float -> float       | precision only                                                 |
| mul / div by a Python number > 0          | softmax scale                                                  |
| mul / div by a tensor of the query heads  | a scale tensor (0-d, or per head: learned temperatures), folded |
|                                           | into q (plan/extensions.py); once, over every term, no mask or |
|                                           | soft cap below it                                              |
| add(scores, mask)                         | additive mask (float), scaled by any later multiplier          |
| add(scores_1, scores_2)                   | sum of products: MLA/GLA's q_lat.c + q_pe.k_pe                 |
| where(cond, scores, fill) / masked_fill   | boolean mask, fill -inf or <= NEGLIGIBLE_FILL once scaled       |
| bmm / mm                                  | a q.k product (a term)                                         |
| tanh, c[h] * key position, a sink column  | FlashAttention's extensions: score_mods.py                     |
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import fx
from torch._subclasses.fake_tensor import is_fake, unset_fake_temporarily

from ...kernels.common.mask_range import MASKED_BIAS
from ..decline import UNEXPECTED_GRAPH, Decline
from ..frozen_weights import attribute
from .layout import VIEW_OPS, Layout, fake_value, broadcast_layout, compose, identity, is_view_like
from .operands import convert_dtypes, is_call, scalar_factor, scalar_value
from .score_mods import PerHeadTensor, ScoreMods, match_alibi, score_mod_sources, visit_soft_cap

aten = torch.ops.aten

# A fill at or below this (after later scaling) excludes its key, as in the kernels' key range (MASKED_BIAS,
# float16's lowest). Float16 models fill masks with it, and so does torch's SDPA for cuDNN, which takes no -inf:
# it hands a boolean mask on as where(mask, 0, -65504). The key's weight in float32 is 0 unless the row's scaled
# scores spread by more than about 65,400 (added to the scores: exp(fill + score - max)) or all lie below about
# -65,400 (in their place: exp(fill - max)). A row that hides every key then gets the op's 0, as SDPA gives a
# boolean mask; eager with such a fill gives the mean of the values, or at -65504 nearly unmasked attention.
NEGLIGIBLE_FILL = MASKED_BIAS

PRODUCT_OPS = (aten.bmm.default, aten.mm.default)


@dataclasses.dataclass
class RawTerm:
    product: fx.Node  # bmm / mm
    c_over_product: Layout  # the softmax input over the product's output
    scale: float  # multipliers between this product and the softmax
    under_tensor_scale: bool = False  # a scale tensor (ScoreMods.score_scale) lies between it and the softmax


@dataclasses.dataclass
class MaskUse:
    node: fx.Node
    additive: bool  # float added to the scores; else boolean
    attend_if: bool  # boolean masks: the value that means "attend"
    c_over_mask: Layout  # the softmax input over the mask's axes (broadcast dims hold no pieces)
    multiplier: float  # additive masks: the scale applied after them


@dataclasses.dataclass
class ScoreWalk:
    terms: list
    masks: list
    chain: list  # nodes between products and softmax input, owned by the site
    mods: ScoreMods = dataclasses.field(default_factory=ScoreMods)  # soft cap, ALiBi, sinks (score_mods.py)
    under_tensor_scale: int = 0  # the walk is below the scale tensor (a depth: add visits both its branches)


def fill_value(arg) -> Optional[float]:
    value = scalar_value(arg)
    if value is not None:
        return value
    if is_call(arg, aten.full.default) and not fake_value(arg).shape:
        return scalar_value(arg.args[1])
    if is_call(arg, aten.scalar_tensor.default):
        return scalar_value(arg.args[0])
    return _held_scalar(arg)


def _held_scalar(node) -> Optional[float]:
    """The value of a 0-d tensor the graph holds as a constant: torch.tensor(0.0) in traced code (transformers'
    masks: where(mask, torch.tensor(0.0), min)) is a get_attr, read through lift_fresh_copy."""
    if is_call(node, aten.lift_fresh_copy.default):
        node = node.args[0]
    if not (isinstance(node, fx.Node) and node.op == "get_attr" and node.graph.owning_module is not None):
        return None
    try:
        value = attribute(node.graph.owning_module, node.target)
    except AttributeError:
        return None
    if not isinstance(value, torch.Tensor) or value.dim() != 0 or is_fake(value) or value.is_meta \
            or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
        return None
    with unset_fake_temporarily():  # (the pass runs under the graph's fake mode)
        return float(value.item())


def _view_step(node: fx.Node) -> Optional[Layout]:
    source = fake_value(node.args[0])
    return VIEW_OPS[node.target](node, identity(list(source.shape)))


def reaches_product(node, budget: int = 64, tensor_factors: bool = True) -> bool:
    """Whether node is computed from a bmm/mm through ops allowed between products and softmax (tensor_factors:
    multiplies by tensors included)."""
    stack, seen = [node], set()
    while stack and budget > 0:
        current = stack.pop()
        if not isinstance(current, fx.Node) or current in seen:
            continue
        seen.add(current)
        budget -= 1
        if is_call(current, *PRODUCT_OPS):
            return True
        if is_view_like(current) or convert_dtypes(current) is not None:
            stack.append(current.args[0])
        elif scalar_factor(current) is not None:
            stack.append(scalar_factor(current)[0])
        elif tensor_factors and is_call(current, aten.mul.Tensor):
            stack.extend(arg for arg in current.args[:2] if isinstance(arg, fx.Node))
        elif tensor_factors and is_call(current, aten.div.Tensor):
            stack.append(current.args[0])
        elif is_call(current, aten.add.Tensor, aten.where.self, aten.masked_fill.Scalar):
            stack.extend(arg for arg in current.args if isinstance(arg, fx.Node))
        elif score_mod_sources(current) is not None:
            stack.extend(score_mod_sources(current))
    return False


def _mask_layout(c_over_node: Layout, mask: fx.Node, node: fx.Node, what: str = "mask",
                 shape: str = "[B, 1, Lq, S]") -> Layout:
    """The softmax input over the axes of a tensor (a mask, a scale tensor) broadcast into the scores at node."""
    mask_val, node_val = fake_value(mask), fake_value(node)
    if mask_val is None or node_val is None:
        raise Decline(f"{what} {mask.name} has no tensor metadata", fix=UNEXPECTED_GRAPH, node=mask)
    spread = broadcast_layout(list(mask_val.shape), list(node_val.shape))
    composed = None if spread is None else compose(c_over_node, spread)
    if composed is None:
        raise Decline(f"{what} {mask.name} of shape {tuple(mask_val.shape)} does not broadcast to the scores of shape "
                      f"{tuple(node_val.shape)}", fix=f"a {what} broadcastable to the scores ({shape})", node=mask)
    return composed


def walk_scores(scores: fx.Node) -> ScoreWalk:
    walk = ScoreWalk([], [], [])
    value = fake_value(scores)
    _visit(scores, identity(list(value.shape)), 1.0, walk, is_root=True)
    if not walk.terms:
        raise Decline("no q.k product feeds the softmax",
                      fix="nothing: without a q @ k product the softmax is not attention; the site stays with Inductor")
    if walk.mods.score_scale is not None and not all(term.under_tensor_scale for term in walk.terms):
        raise Decline("a scale tensor multiplies one score term only",
                      fix="scale the sum of the latent and rope score terms, not one of them",
                      node=walk.mods.score_scale.node)
    return walk


def _visit(node, c_over_node: Layout, scale: float, walk: ScoreWalk, is_root: bool = False) -> None:
    if not isinstance(node, fx.Node) or fake_value(node) is None:
        raise Decline("scores come from a non-tensor value", fix=UNEXPECTED_GRAPH)
    if not is_root:
        walk.chain.append(node)
    if is_call(node, *PRODUCT_OPS):
        walk.terms.append(RawTerm(node, c_over_node, scale, walk.under_tensor_scale > 0))
        return
    if is_view_like(node):
        step = _view_step(node)
        composed = None if step is None else compose(c_over_node, step)
        if composed is None:
            raise Decline(f"scores pass through {node.target} that does not keep every element, or that regroups "
                          "their dims in a way that cannot be followed",
                          fix="between q @ k and the softmax, only views that keep every score (no slicing of the "
                              "scores; reshapes that split or merge whole dims only)", node=node)
        _visit(node.args[0], composed, scale, walk)
        return
    dtypes = convert_dtypes(node)
    if dtypes is not None:
        if not (dtypes[0].is_floating_point and dtypes[1].is_floating_point):
            raise Decline(f"scores are cast from {dtypes[0]} to {dtypes[1]}",
                          fix="keep the scores floating point (no integer casts); an integer softmax input is not "
                              "attention", node=node)
        _visit(node.args[0], c_over_node, scale, walk)
        return
    scaled = scalar_factor(node)
    if scaled is not None:
        source, factor = scaled
        if not factor > 0:
            raise Decline(f"scores are multiplied by {factor} (the op needs a positive scale)",
                          fix="a positive softmax scale", node=node)
        _visit(source, c_over_node, scale * factor, walk)
        return
    tensor_scaled = tensor_factor(node)
    if tensor_scaled is not None:
        _visit_tensor_scale(node, *tensor_scaled, c_over_node, scale, walk)
        return
    if is_call(node, aten.add.Tensor):
        _visit_add(node, c_over_node, scale, walk)
        return
    if is_call(node, aten.where.self):
        cond, when_true, when_false = node.args[:3]
        _visit_fill(node, cond, when_true, when_false, c_over_node, scale, walk)
        return
    if is_call(node, aten.masked_fill.Scalar):
        source, cond, fill = node.args[:3]
        _visit_fill(node, cond, fill, source, c_over_node, scale, walk)
        return
    if visit_soft_cap(node, c_over_node, scale, walk, _visit):
        return
    raise Decline(f"scores are computed by {node.target} (not a scale, a mask or a q.k product)",
                  fix="between q @ k and the softmax, only scalar scales, masks (add, masked_fill, where), views "
                      "and the extensions the op takes (soft cap, ALiBi, sinks)",
                  node=node)


def tensor_factor(node: fx.Node) -> Optional[tuple]:
    """(scores, factor, divides) for scores * t, t * scores or scores / t, t a floating tensor not computed from the
    scores that broadcasts into them (the product keeps the scores' shape)."""
    if is_call(node, aten.mul.Tensor):
        pairs = [node.args[:2], node.args[1::-1]]
    elif is_call(node, aten.div.Tensor) and not node.kwargs.get("rounding_mode"):
        pairs = [node.args[:2]]
    else:
        return None
    for source, factor in pairs:
        if not (isinstance(source, fx.Node) and isinstance(factor, fx.Node)):
            continue
        source_val, factor_val, out_val = fake_value(source), fake_value(factor), fake_value(node)
        if source_val is None or factor_val is None or out_val is None or not factor_val.is_floating_point():
            continue
        if reaches_product(source) and not reaches_product(factor) and list(source_val.shape) == list(out_val.shape):
            return source, factor, node.target is aten.div.Tensor
    return None


def _visit_tensor_scale(node: fx.Node, source: fx.Node, factor: fx.Node, divides: bool, c_over_node: Layout,
                        scale: float, walk: ScoreWalk) -> None:
    """Scores times (or over) a tensor that may vary per query head: the op takes the scale as a number, so the
    plan folds the tensor into q, which is exact only where nothing between the products and this multiply is
    added to the scores or capped (both are checked as the walk meets them below)."""
    if walk.mods.score_scale is not None:
        raise Decline("the scores are scaled by two tensors", fix="multiply the scores by one scale tensor (their "
                      "product), or fold the scales into q", node=node)
    c_over_factor = _mask_layout(c_over_node, factor, node, "scale tensor", "per query head: [1, Hq, 1, 1]")
    walk.mods.score_scale = PerHeadTensor(factor, c_over_factor)
    walk.mods.score_scale_divides = divides
    walk.mods.score_scale_dtype = fake_value(node).dtype
    walk.under_tensor_scale += 1
    _visit(source, c_over_node, scale, walk)
    walk.under_tensor_scale -= 1


def _no_tensor_scale_above(walk: ScoreWalk, what: str, node: fx.Node) -> None:
    """A mask or bias added below a scale tensor would be scaled by it, which folding the tensor into q does not."""
    if walk.under_tensor_scale:
        raise Decline(f"a {what} is applied to the scores before they are scaled by a tensor",
                      fix=f"scale the scores first, then apply the {what} (or fold the scale tensor into q)", node=node)


def _visit_add(node: fx.Node, c_over_node: Layout, scale: float, walk: ScoreWalk) -> None:
    if node.kwargs.get("alpha", 1) != 1:
        raise Decline("scores are combined by add with alpha != 1",
                      fix="add masks with alpha=1 (scores + mask)", node=node)
    left, right = node.args[:2]
    left_scores, right_scores = reaches_product(left), reaches_product(right)
    if left_scores and right_scores:
        # A side that reaches a product only through a tensor multiply beside one that does without is a bias
        # (e.g. (m @ W) * t), as it was before scale tensors were walked.
        direct = reaches_product(left, tensor_factors=False), reaches_product(right, tensor_factors=False)
        if direct[0] != direct[1]:
            left_scores, right_scores = direct
    if left_scores and right_scores:
        _visit(left, c_over_node, scale, walk)
        _visit(right, c_over_node, scale, walk)
        return
    if not (left_scores or right_scores):
        raise Decline("neither side of an add on the scores comes from a q.k product",
                      fix="nothing: scores that do not come from q @ k are not attention; the site stays with "
                          "Inductor", node=node)
    source, mask = (left, right) if left_scores else (right, left)
    if not isinstance(mask, fx.Node):
        raise Decline("a constant is added to the scores",
                      fix="drop the constant: adding one number to every score does not change the softmax", node=node)
    mask_val = fake_value(mask)
    if mask_val is None or not mask_val.is_floating_point():
        raise Decline(f"additive mask {mask.name} is not a floating tensor",
                      fix="a float additive mask, or a bool mask through masked_fill / where", node=mask)
    _no_tensor_scale_above(walk, "mask or bias", node)
    c_over_mask = _mask_layout(c_over_node, mask, node)
    alibi = match_alibi(mask, c_over_mask, scale)
    if alibi is not None:
        if walk.mods.inside_tanh or walk.mods.alibi is not None:
            raise Decline("an ALiBi bias is added under a soft cap, or twice",
                          fix="add the ALiBi bias once, after the soft cap", node=node)
        walk.mods.alibi, walk.mods.alibi_positions = alibi
    else:
        walk.masks.append(MaskUse(mask, True, True, c_over_mask, scale))
    _visit(source, c_over_node, scale, walk)


def _visit_fill(node, cond, when_true, when_false, c_over_node: Layout, scale: float, walk: ScoreWalk) -> None:
    """where(cond, a, b): one of a/b is the scores, the other a constant fill that excludes keys."""
    true_fill, false_fill = fill_value(when_true), fill_value(when_false)
    if true_fill is not None and false_fill is None:
        fill, source, attend_if = true_fill, when_false, False
    elif false_fill is not None and true_fill is None:
        fill, source, attend_if = false_fill, when_true, True
    else:
        raise Decline("a where() on the scores does not select between scores and a constant fill",
                      fix="mask with scores.masked_fill(mask, -inf) or torch.where(mask, scores, -inf)", node=node)
    if not (fill == -math.inf or fill * scale <= NEGLIGIBLE_FILL):
        raise Decline(f"masked scores are replaced by {fill}, which still takes part in the softmax",
                      fix="fill masked scores with -inf or torch.finfo(dtype).min", node=node)
    if not isinstance(cond, fx.Node) or fake_value(cond) is None or fake_value(cond).dtype != torch.bool:
        raise Decline("the mask selecting masked scores is not a boolean tensor", fix="a bool mask", node=node)
    _no_tensor_scale_above(walk, "mask", node)
    walk.masks.append(MaskUse(cond, False, attend_if, _mask_layout(c_over_node, cond, node), 1.0))
    _visit(source, c_over_node, scale, walk)

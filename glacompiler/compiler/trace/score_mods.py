"""Score modifications the op takes as FlashAttention's extensions, recognised on an attention site:

| as written                                                    | op argument   | model            |
|---------------------------------------------------------------|---------------|------------------|
| cap * tanh(scores / cap) (any positive scales around the tanh) | softcap       | Gemma2 (HF eager) |
| softmax(cat([scores, sink column], -1))[..., :-1], the row max subtracted first or not | sinks | GPT-OSS |
| scores + c[h] * key position (an iota), e.g. BLOOM's baddbmm   | alibi_slopes  | BLOOM            |

(transformers 5.17's BLOOM counts its positions over a mask of ones: running_counts.py turns that into the iota.)

Sliding windows need nothing here: transformers' sliding layers pass them as masks, which the mask path fuses.
Anything else around the scores stays a Decline (score_side.py). The hooks here are called from score_side.py
(the walk from the softmax to the products) and plan/match.py (the sink column); plan/extensions.py turns what
they record into the op's arguments."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import torch
from torch import fx

from ..decline import Decline
from .layout import Layout, Piece, broadcast_layout, compose, fake_value, trace
from .operands import convert_dtypes, is_call, is_float_cast, only_user, scalar_factor, scalar_value

aten = torch.ops.aten
prims = torch.ops.prims


@dataclasses.dataclass
class PerHeadTensor:
    """A tensor read along the scores' head dims: node, and the scores over its axes (broadcast elsewhere)."""

    node: fx.Node
    c_over_node: Layout
    factor: float = 1.0  # the op's argument is the node times this


@dataclasses.dataclass
class ScoreMods:
    softcap: float = 0.0
    sinks: Optional[PerHeadTensor] = None
    alibi: Optional[PerHeadTensor] = None  # slopes c[h] of a bias c[h] * key position
    alibi_positions: Optional[Layout] = None  # the scores over the iota of key positions
    inside_tanh: bool = False  # the walk is below the soft cap's tanh
    score_scale: Optional[PerHeadTensor] = None  # a tensor the scores are multiplied by (score_side.py)
    score_scale_divides: bool = False  # ... or divided by
    score_scale_dtype: Optional[torch.dtype] = None  # the dtype the scaled scores are computed in

    @property
    def any(self) -> bool:
        return (bool(self.softcap) or self.sinks is not None or self.alibi is not None
                or self.score_scale is not None)


def score_mod_sources(node: fx.Node) -> Optional[list]:
    """The score inputs of a node that one of the modifications above puts between the products and the
    softmax (reaches_product walks through them), or None."""
    if is_call(node, aten.tanh.default):
        return [node.args[0]]
    if is_call(node, aten.cat.default):
        return [part for part in node.args[0] if isinstance(part, fx.Node)]
    shifted = _row_max_shift(node)
    if shifted is not None:
        return [shifted]
    return None


def visit_soft_cap(node: fx.Node, c_over_node: Layout, scale: float, walk, visit: Callable) -> bool:
    """scale * tanh(x): a soft cap of `scale` (the multiplier after the tanh), x walked on with the same scale
    so that the products' scale is the op's softmax_scale (cap * tanh(softmax_scale * s / cap)). Masks or
    biases under the tanh are not the op's (it adds them after the cap); those found so far lie after it."""
    if not is_call(node, aten.tanh.default):
        return False
    mods = walk.mods
    if walk.under_tensor_scale:
        raise Decline("the soft cap's output is scaled by a tensor (a cap per head, which the op does not take)",
                      fix="scale by the tensor inside the tanh (cap * tanh(s * t / cap)), or by a number outside",
                      node=node)
    if mods.softcap:
        raise Decline("the scores pass through two tanh",
                      fix="nothing: the op soft-caps once (cap * tanh(s / cap)); a second tanh is not its math, so "
                          "the site stays with Inductor", node=node)
    mods.softcap = scale
    masks_before = len(walk.masks)
    mods.inside_tanh = True
    visit(node.args[0], c_over_node, scale, walk)
    mods.inside_tanh = False
    if len(walk.masks) != masks_before:
        raise Decline("a mask is applied under the soft cap's tanh (the op masks after the cap)",
                      fix="apply the mask after the soft cap (cap * tanh(s / cap), then masked_fill or + "
                          "mask)", node=node)
    return True


def _row_max_shift(node: fx.Node) -> Optional[fx.Node]:
    """x for x - max(x, dim, keepdim=True) (max.dim's values, or amax): a shift softmax does not see."""
    if not is_call(node, aten.sub.Tensor) or not isinstance(node.args[1], fx.Node):
        return None
    source, row_max = node.args[:2]
    if is_call(row_max, aten.amax.default) and row_max.args[0] is source:
        return source
    if (row_max.op == "call_function" and row_max.target.__name__ == "getitem" and row_max.args[1] == 0
            and is_call(row_max.args[0], aten.max.dim) and row_max.args[0].args[0] is source):
        return source
    return None


def _skip_float_casts(node: fx.Node, nodes: list) -> fx.Node:
    """The source of a chain of float-to-float casts (each but the first used only by the next), the casts
    added to nodes. The first one's users are checked by the caller."""
    while is_float_cast(node) and (not nodes or len(node.users) == 1):
        nodes.append(node)
        node = node.args[0]
    return node


@dataclasses.dataclass
class PeeledSinks:
    scores: fx.Node  # the scores the sink column was joined to
    sinks: PerHeadTensor
    nodes: list  # the cat, the row max and its shift: the site's own nodes


def peel_sinks(softmax_input: fx.Node, softmax_output: fx.Node, dim: int) -> Optional[PeeledSinks]:
    """GPT-OSS: softmax(cat([scores, sinks.expand(...)], dim) - row max)[..., :S] -> the scores and the sink
    column's tensor, or None where the softmax input is no such cat. Declines a cat that looks like one but
    cannot be read as per-head sinks."""
    nodes = []
    cat = _skip_float_casts(softmax_input, nodes)  # bf16/fp16 models: the softmax upcasts its input
    shifted = _row_max_shift(cat)
    if shifted is not None:
        row_max = cat.args[1]
        nodes += [cat, row_max] + ([row_max.args[0]] if not is_call(row_max, aten.amax.default) else [])
        cat = _skip_float_casts(shifted, nodes)
    if not is_call(cat, aten.cat.default):
        return None
    parts = cat.args[0]
    cat_dim = cat.args[1] if len(cat.args) > 1 else 0
    rank = fake_value(cat).dim()
    if len(parts) != 2 or (cat_dim + rank if cat_dim < 0 else cat_dim) != dim:
        raise Decline("the scores are concatenated with something other than one sink column after them",
                      fix="join the sinks as one column after the scores (torch.cat([scores, sinks], dim=-1), "
                          "GPT-OSS's form)", node=cat)
    scores, column = parts
    score_keys = fake_value(scores).shape[dim]
    if fake_value(column).shape[dim] != 1:
        raise Decline("the column joined to the scores is wider than one sink per row",
                      fix="join one sink logit per row (torch.cat([scores, sinks[..., None]], dim=-1))", node=column)
    kept = only_user(softmax_output)
    while kept is not None and is_float_cast(kept):  # ... and casts the probabilities back
        kept = only_user(kept)
    if not (is_call(kept, aten.slice.Tensor) and (kept.args[1] + rank if kept.args[1] < 0 else kept.args[1]) == dim
            and (kept.args[2] if len(kept.args) > 2 else 0) in (0, None) and fake_value(kept).shape[dim] == score_keys
            and (len(kept.args) < 5 or kept.args[4] == 1)):
        raise Decline("the sink column's probability is not dropped right after the softmax",
                      fix="drop the sink column right after the softmax (probs[..., :-1])", node=softmax_output)
    # (The softmax input's own users were checked by the caller.)
    if len(scores.users) != 1 or (cat is not softmax_input and set(cat.users) - set(nodes)):
        raise Decline("the scores joined to the sinks are also used elsewhere",
                      fix="use the scores only for the softmax", node=scores)
    column_value = fake_value(column)
    if not column_value.is_floating_point():
        raise Decline("the sink column is not a floating tensor",
                      fix="sinks as a float tensor (one logit per head)", node=column)
    spread = broadcast_layout(list(column_value.shape), list(fake_value(cat).shape))
    if spread is None:
        raise Decline("the sink column does not broadcast to the scores",
                      fix="sinks of shape [Hq], expanded to [B, Hq, Lq, 1]", node=column)
    # The scores over the column's axes: the column (size 1 along the keys) is the same for every key.
    dims = list(spread.dims)
    dims[dim] = (Piece(None, score_keys),)
    c_over_column = Layout(tuple(dims), spread.base_sizes)
    traced = trace(column)
    if traced is not None and traced.chain:
        composed = compose(c_over_column, traced.layout)
        if composed is None:
            raise Decline("the sink column is a view that cannot be followed",
                          fix="sinks as a view (reshape, expand) of an [Hq] tensor", node=column)
        column, c_over_column = traced.base, composed
    return PeeledSinks(scores, PerHeadTensor(column, c_over_column), nodes + [cat])


def key_iota(node: fx.Node) -> Optional[tuple]:
    """(iota node, step) when node is an iota of key positions (step != 0), possibly scaled, shifted by a
    constant, viewed and cast to floating point: c * (step * j + offset) is c * step * j plus a per-row constant."""
    factor = 1.0
    while True:
        dtypes = convert_dtypes(node)
        traced = trace(node)
        scaled = scalar_factor(node)
        if dtypes is not None:
            node = node.args[0]
        elif is_call(node, aten.add.Tensor, aten.sub.Tensor) and scalar_value(node.args[1]) is not None:
            node = node.args[0]
        elif scaled is not None:
            node, factor = scaled[0], factor * scaled[1]
        elif traced is not None and traced.chain:
            node = traced.base
        else:
            break
    if is_call(node, prims.iota.default):
        step = node.kwargs.get("step", 1)
        return (node, step * factor) if isinstance(step, int) and step * factor != 0 else None
    return None


def match_alibi(bias: fx.Node, c_over_bias: Layout, multiplier: float) -> Optional[tuple]:
    """An additive term c[h] * key position (what BLOOM adds through baddbmm, its batch repeated): returns
    (PerHeadTensor of c with the factor that makes it the op's slopes, the scores over the iota), or None."""
    node, layout = bias, c_over_bias
    while True:
        traced = trace(node)
        if traced is not None and traced.chain:
            composed = compose(layout, traced.layout)
            if composed is None:
                return None
            node, layout = traced.base, composed
            continue
        if is_call(node, aten.repeat.default):
            composed = compose(layout, _repeat_layout(node))
            if composed is None:
                return None
            node, layout = node.args[0], composed
            continue
        if is_float_cast(node):
            node = node.args[0]
            continue
        break
    if not is_call(node, aten.mul.Tensor) or not all(isinstance(a, fx.Node) for a in node.args[:2]):
        return None
    shape = list(fake_value(node).shape)
    for slopes, positions in (node.args[:2], reversed(node.args[:2])):
        iota = key_iota(positions)
        if iota is None or not fake_value(slopes).is_floating_point():
            continue
        c_over_slopes = _operand_layout(layout, slopes, shape)
        c_over_positions = _operand_layout(layout, positions, shape)
        if c_over_slopes is None or c_over_positions is None:
            return None
        traced = trace(slopes)
        if traced is not None and traced.chain:
            c_over_slopes = compose(c_over_slopes, traced.layout)
            if c_over_slopes is None:
                return None
            slopes = traced.base
        traced = trace(positions)
        if traced is not None and traced.chain:
            c_over_positions = compose(c_over_positions, traced.layout)
        return PerHeadTensor(slopes, c_over_slopes, multiplier * iota[1]), c_over_positions
    return None


def _operand_layout(c_over_node: Layout, operand: fx.Node, shape: list) -> Optional[Layout]:
    spread = broadcast_layout(list(fake_value(operand).shape), shape)
    return None if spread is None else compose(c_over_node, spread)


def _repeat_layout(node: fx.Node) -> Layout:
    """repeat(x, repeats) over x's axes: each dim is the repeat count (broadcast) times x's dim."""
    source_shape = list(fake_value(node.args[0]).shape)
    repeats = list(node.args[1])
    lead = len(repeats) - len(source_shape)
    dims = []
    for index, count in enumerate(repeats):
        axis = index - lead
        pieces = [] if count == 1 else [Piece(None, count)]
        if axis >= 0 and source_shape[axis] != 1:
            pieces.append(Piece(axis, source_shape[axis]))
        dims.append(tuple(pieces))
    return Layout(tuple(dims), tuple(source_shape))


SOFTMAX_STARTS = (aten.amax.default, aten._softmax.default, aten._safe_softmax.default)
_TOWARD_SOFTMAX = (aten.add.Tensor, aten.mul.Tensor, aten.div.Tensor, aten.where.self, aten.masked_fill.Scalar,
                   aten.tanh.default, aten.cat.default, aten.sub.Tensor)


def _reaches_softmax(node: fx.Node, depth: int = 8) -> bool:
    from .layout import is_view_like

    frontier = [node]
    for _ in range(depth):
        following = []
        for current in frontier:
            for user in current.users:
                if is_call(user, *SOFTMAX_STARTS):
                    return True
                if is_view_like(user) or convert_dtypes(user) is not None or is_call(user, *_TOWARD_SOFTMAX):
                    following.append(user)
        frontier = following
    return False


def split_score_baddbmm(graph: fx.Graph) -> None:
    """baddbmm(bias, q, k, beta=b, alpha=a) feeding a softmax (BLOOM adds its ALiBi bias so) becomes
    a * bmm(q, k) + b * bias: the same values, in the form the score walk reads (a product plus a bias)."""
    from ..rewrite.emit import Emitter  # the rewrite stage gives new nodes their fake values

    for node in list(graph.nodes):
        if not is_call(node, aten.baddbmm.default) or not _reaches_softmax(node):
            continue
        beta, alpha = node.kwargs.get("beta", 1), node.kwargs.get("alpha", 1)
        if scalar_value(beta) is None or scalar_value(alpha) is None or beta == 0:
            continue
        bias, left, right = node.args[:3]
        emit = Emitter(graph, node)
        product = emit.call(aten.bmm.default, left, right)
        if alpha != 1:
            product = emit.call(aten.mul.Tensor, product, alpha)
        if beta != 1:
            bias = emit.call(aten.mul.Tensor, bias, beta)
        total = emit.call(aten.add.Tensor, product, bias)
        for created in emit.created:
            created.meta.update({k: v for k, v in node.meta.items() if k not in ("val", "tensor_meta")})
        node.replace_all_uses_with(total)
        graph.erase_node(node)


__all__ = ["PerHeadTensor", "ScoreMods", "key_iota", "match_alibi", "peel_sinks", "score_mod_sources",
           "split_score_baddbmm", "visit_soft_cap"]

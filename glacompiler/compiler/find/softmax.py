"""The softmax forms an attention site may carry in an ATen graph after AOT (Inductor decomposes softmax
before our pass sees it). Each form is matched with explicit user-count checks, so a softmax whose pieces
are also used elsewhere (e.g. the max or the sum returned for other purposes) is not taken apart.

| form                    | nodes                                                                         |
|-------------------------|-------------------------------------------------------------------------------|
| decomposed softmax      | amax(x,[d],True); sub(x,amax); exp; sum(exp,[d],True); div(exp,sum)           |
| decomposed safe softmax | the above, then where(~any(x != -inf, d), 0, div)  (SDPA's math path)         |
| _softmax / _safe_softmax| a single node (graphs that reach us undecomposed)                             |

Fully masked rows: safe softmax yields 0 there, like our op; plain softmax yields NaN (all -inf) or a
uniform average (finite fill), which our op does not reproduce: such rows are degenerate inputs."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import fx

from ..trace.layout import fake_value
from ..trace.operands import only_user

aten = torch.ops.aten


@dataclasses.dataclass
class SoftmaxMatch:
    input: fx.Node  # the scores
    output: fx.Node  # the probabilities
    dim: int  # normalized reduction dim
    nodes: list  # the nodes that make up the softmax (input excluded)
    form: str


def _call(node, *targets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in targets


def _normalize(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def _is_zero(value) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value == 0
    if _call(value, aten.full.default):
        return value.args[1] == 0
    if _call(value, aten.scalar_tensor.default):
        return value.args[0] == 0
    return False


def _match_safe_wrapper(scores: fx.Node, probs: fx.Node, dim: int) -> Optional[tuple]:
    """where(logical_not(any(logical_not(eq(x, -inf)), d, True)), 0, probs): rows with no finite score -> 0."""
    where = only_user(probs)
    if not _call(where, aten.where.self) or where.args[2] is not probs or not _is_zero(where.args[1]):
        return None
    not_any = where.args[0]
    if not _call(not_any, aten.logical_not.default):
        return None
    any_node = not_any.args[0]
    if not _call(any_node, aten.any.dim, aten.any.dims):
        return None
    any_dims = any_node.args[1] if isinstance(any_node.args[1], (list, tuple)) else [any_node.args[1]]
    rank = fake_value(scores).dim()
    if [_normalize(d, rank) for d in any_dims] != [dim]:
        return None
    finite = any_node.args[0]
    if not _call(finite, aten.logical_not.default):
        return None
    is_neg_inf = finite.args[0]
    if not (_call(is_neg_inf, aten.eq.Scalar) and is_neg_inf.args[0] is scores and is_neg_inf.args[1] == -math.inf):
        return None
    return where, [is_neg_inf, finite, any_node, not_any, where] + (
        [where.args[1]] if isinstance(where.args[1], fx.Node) else []
    )


def match_decomposed(amax: fx.Node) -> Optional[SoftmaxMatch]:
    if not _call(amax, aten.amax.default):
        return None
    scores = amax.args[0]
    dims = amax.args[1] if len(amax.args) > 1 else amax.kwargs.get("dim")
    keepdim = amax.args[2] if len(amax.args) > 2 else amax.kwargs.get("keepdim", False)
    value = fake_value(scores)
    if value is None or not keepdim or not isinstance(dims, (list, tuple)) or len(dims) != 1:
        return None
    dim = _normalize(dims[0], value.dim())
    shifted = only_user(amax)
    if not (_call(shifted, aten.sub.Tensor) and shifted.args[0] is scores and shifted.args[1] is amax):
        return None
    exp = only_user(shifted)
    if not _call(exp, aten.exp.default) or len(exp.users) != 2:
        return None
    total = next((u for u in exp.users if _call(u, aten.sum.dim_IntList)), None)
    probs = next((u for u in exp.users if _call(u, aten.div.Tensor)), None)
    if total is None or probs is None or probs.args[0] is not exp or probs.args[1] is not total:
        return None
    total_dims = total.args[1]
    if [_normalize(d, value.dim()) for d in total_dims] != [dim] or not (len(total.args) > 2 and total.args[2]):
        return None
    if only_user(total) is not probs:
        return None
    nodes = [amax, shifted, exp, total, probs]
    form = "decomposed softmax"
    safe = _match_safe_wrapper(scores, probs, dim)
    if safe is not None:
        probs, extra = safe
        nodes += extra
        form = "decomposed safe softmax"
    return SoftmaxMatch(scores, probs, dim, nodes, form)


def match_single_node(node: fx.Node) -> Optional[SoftmaxMatch]:
    if not _call(node, aten._softmax.default, aten._safe_softmax.default):
        return None
    value = fake_value(node.args[0])
    if value is None:
        return None
    form = "_softmax" if node.target is aten._softmax.default else "_safe_softmax"
    return SoftmaxMatch(node.args[0], node, _normalize(node.args[1], value.dim()), [node], form)


def find_softmaxes(graph: fx.Graph) -> list:
    found = []
    for node in graph.nodes:
        match = match_decomposed(node) or match_single_node(node)
        if match is not None:
            found.append(match)
    return found


def scores_used_only_by_softmax(match: SoftmaxMatch) -> bool:
    own = set(match.nodes)
    return all(user in own for user in match.input.users)

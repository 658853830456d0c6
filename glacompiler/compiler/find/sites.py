"""Attention sites in a graph: SDPA calls, and softmaxes over a q.k product whose result feeds a product.
Each Site is planned by plan/match.py (its plan() method), which raises Decline for a site that is not ours."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import fx

from ..decline import Decline
from ..plan.match import plan_sdpa_site, plan_softmax_site
from ..plan.site_plan import SitePlan
from ..trace.layout import is_view_like
from ..trace.operands import convert_dtypes
from ..trace.score_side import PRODUCT_OPS, reaches_product
from .sdpa import is_sdpa, read_sdpa
from .softmax import SoftmaxMatch, find_softmaxes

aten = torch.ops.aten

# What may sit between the probabilities and the value product of something still shaped like attention.
ELEMENTWISE_OPS = (aten.mul.Tensor, aten.div.Tensor, aten.where.self, aten.mul.Scalar, aten.div.Scalar)


@dataclasses.dataclass
class Site:
    """A place in the graph that computes attention; plan() says how to rewrite it or raises Decline."""

    anchor: fx.Node  # the node whose provenance is reported
    form: str
    softmax: Optional[SoftmaxMatch] = None
    sdpa_node: Optional[fx.Node] = None

    def plan(self) -> SitePlan:
        """A key concatenated along its head dim is first read as GTA/MLA's two parts (tied or latent part +
        one shared rope key: the caches are read in place); failing that, as one key tensor."""
        try:
            return self._plan(split_cat=True)
        except Decline as split:
            try:
                return self._plan(split_cat=False)
            except Decline as whole:
                # Report the attempt that understood the site's shapes (it got further), the split one first.
                if split.spec is not None or whole.spec is None or str(whole) == str(split):
                    raise split from None
                raise

    def _plan(self, split_cat: bool) -> SitePlan:
        if self.softmax is not None:
            return plan_softmax_site(self.softmax, split_cat)
        return plan_sdpa_site(read_sdpa(self.sdpa_node), split_cat)


def _feeds_product(node: fx.Node, depth: int = 6) -> bool:
    """The probabilities reach the left operand of a bmm/mm through views, casts and elementwise ops (a
    dropout is still an attention site, reported as skipped)."""
    frontier = [node]
    for _ in range(depth):
        following = []
        for current in frontier:
            for user in current.users:
                if user.op != "call_function":
                    continue
                if user.target in PRODUCT_OPS:
                    if user.args[0] is current:
                        return True
                elif is_view_like(user) or convert_dtypes(user) is not None or user.target in ELEMENTWISE_OPS:
                    following.append(user)
        frontier = following
    return False


def find_sites(graph: fx.Graph) -> list:
    """Attention-shaped places: SDPA calls, and softmaxes over a product whose result feeds a product."""
    sites = []
    for node in graph.nodes:
        if node.op == "call_function" and is_sdpa(node):
            sites.append(Site(node, f"sdpa:{node.target.__name__.split('.')[0]}", sdpa_node=node))
    for match in find_softmaxes(graph):
        if reaches_product(match.input) and _feeds_product(match.output):
            sites.append(Site(match.output, match.form, softmax=match))
    return sites

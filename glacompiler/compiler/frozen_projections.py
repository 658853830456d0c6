"""The backend's post-grad pre-pass over a frozen graph's projections: one GEMM for projections of one input
(concat_projections.py), then every GEMM padded to aligned widths (align_projections.py), then the user's pass of
that slot. Installed only where Inductor's config freezes the graph: without freezing the weights are graph inputs,
and changing them would copy them every step."""
from __future__ import annotations

from typing import Optional

import torch
from torch import fx
from torch._dynamo.utils import counters
from torch._inductor import custom_graph_pass
from torch._inductor.custom_graph_pass import CustomGraphPass

from .align_projections import align_projections
from .concat_projections import concat_projections
from .graph_pass import as_passes

# Inductor passes is_inference to a pass of this kind (torch 2.13 on); torch 2.11 has none.
_InferenceAwarePass = getattr(custom_graph_pass, "CustomInferenceAwareGraphPass", CustomGraphPass)


class FrozenProjectionsPass(_InferenceAwarePass):
    """concat_projections and align_projections as Inductor's post_grad_custom_pre_pass, then the pass the user had
    set there. Counters: glacompiler.projections_concatenated (GEMMs removed), glacompiler.projections_aligned."""

    def __init__(self, chained: Optional[object] = None):
        self.chained = chained

    def __call__(self, graph: fx.Graph, is_inference: Optional[bool] = None) -> None:
        counters["glacompiler"]["projections_concatenated"] += concat_projections(graph)
        counters["glacompiler"]["projections_aligned"] += align_projections(graph)
        for chained in as_passes(self.chained):
            if _InferenceAwarePass is not CustomGraphPass and isinstance(chained, _InferenceAwarePass):
                chained(graph, is_inference=is_inference)
            else:
                chained(graph)

    def uuid(self) -> Optional[str]:
        # None: Inductor's FX-graph cache is bypassed for the graphs this pass runs on. The cache key is made before
        # post-grad passes, and Inductor's own frozen constants enter it by shape only, fetched again from the model
        # on a hit; ours would be pickled into the entry: another model of the same shapes would get these weights.
        return None


def with_frozen_projection_passes(patches: dict) -> dict:
    """Inductor config patches with FrozenProjectionsPass as the post-grad pre-pass where they freeze the graph."""
    if not patches.get("freezing", torch._inductor.config.freezing):
        return patches
    chained = patches.get("post_grad_custom_pre_pass", torch._inductor.config.post_grad_custom_pre_pass)
    return {**patches, "post_grad_custom_pre_pass": FrozenProjectionsPass(chained)}

"""The graph pass: find attention sites in the ATen graph Inductor is about to compile, plan each, rewrite
those that match exactly into glacompiler.attention_with_kvcache, and record every site in the report.

It runs as Inductor's joint_custom_pre_pass: on the functional ATen graph right after AOT tracing, before
Inductor's own joint-graph patterns (so none of them can touch a site first) and before partitioning."""
from __future__ import annotations

import os
from typing import Optional

from torch import fx
from torch._inductor.custom_graph_pass import CustomGraphPass

from ..spec import ProblemShape
from .decline import Decline
from .find.sites import find_sites
from .inductor_guard import guard_attention_fusions
from .plan.extensions import describe_extensions
from .plan.site_plan import SitePlan, slots_size
from .report import REWRITTEN, SKIPPED, SiteRecord, add_records, source_location
from .rewrite.emit import SharedMaskRanges, emit_site
from .trace.layout import fake_value
from .trace.score_mods import split_score_baddbmm


class GlaPassError(RuntimeError):
    """An unexpected error inside our pass; the backend recompiles the graph without the pass."""


def strict_mode() -> bool:
    """GLACOMPILER_STRICT=1: an unexpected error in the pass (or in online tuning) propagates to the user's
    compile instead of falling back to Inductor alone with a warning. Sites the pass declines are still
    skipped and reported: a decline is an answer, not an error."""
    return os.environ.get("GLACOMPILER_STRICT", "0") not in ("", "0")


def is_training_graph(graph: fx.Graph) -> bool:
    return any(node.op == "placeholder" and node.name.startswith("tangents") for node in graph.nodes)


class AttentionRewritePass(CustomGraphPass):
    def __init__(self, rewrite: bool = True, chained: Optional[object] = None, graph_name: str = ""):
        self.rewrite = rewrite
        self.chained = chained  # a joint_custom_pre_pass the user had configured: run after ours
        self.graph_name = graph_name
        self.records: list = []
        self.tuning_targets: list = []  # (AttentionSpec, ProblemShape, device) of rewritten CUDA sites

    def __call__(self, graph: fx.Graph) -> None:
        guard_attention_fusions()
        records = []
        try:
            self._run(graph, records)
        except Exception as error:
            # Sites already rewritten in this graph are void: the backend recompiles it without our pass.
            records = [
                SiteRecord(r.kind, r.spec, r.source, SKIPPED, f"internal error in the gla pass: {error!r}", r.form,
                           r.graph)
                for r in records
            ] or [SiteRecord(None, None, self.graph_name or "graph", SKIPPED,
                             f"internal error in the gla pass: {error!r}", "", self.graph_name)]
            add_records(records)
            raise GlaPassError(str(error)) from error
        add_records(records)
        self.records.extend(records)
        if self.chained is not None:
            self.chained(graph)

    def _run(self, graph: fx.Graph, records: list) -> None:
        training = is_training_graph(graph)
        mask_ranges = SharedMaskRanges(graph)
        if not training:
            split_score_baddbmm(graph)  # BLOOM's scores: a product plus its ALiBi bias, in one baddbmm
        for site in find_sites(graph):
            source = source_location(site.anchor)
            if training:
                records.append(SiteRecord(None, None, source, SKIPPED,
                                          "the graph computes gradients (training): the op has no backward",
                                          site.form, self.graph_name))
                continue
            try:
                plan = site.plan()
            except Decline as decline:
                spec = decline.spec
                records.append(SiteRecord(spec.kind if spec else None, spec, source, SKIPPED, str(decline), site.form,
                                          self.graph_name))
                continue
            if not self.rewrite:
                records.append(SiteRecord(plan.spec.kind, plan.spec, source, SKIPPED, "rewriting is disabled",
                                          site.form, self.graph_name))
                continue
            emit_site(graph, plan, mask_ranges)
            self._note_tuning_target(plan)
            records.append(SiteRecord(plan.spec.kind, plan.spec, source, REWRITTEN, "",
                                      site.form + describe_extensions(plan), self.graph_name))
        graph.lint()

    def _note_tuning_target(self, plan: SitePlan) -> None:
        """Remember the site's shape bucket for online tuning (backend(autotune=True)); symbolic sizes use
        the example input's value, which is the shape the model is first run with."""
        device = fake_value(plan.k.base).device  # the cache the site reads
        if device.type != "cuda":
            return
        batch = slots_size(plan.slots, plan.roles.batch)
        sizes = [batch, plan.query_len, plan.key_len]
        hints = [size if isinstance(size, int) else getattr(size.node, "hint", None) for size in sizes]
        if any(not isinstance(hint, int) for hint in hints):
            return
        shape = ProblemShape(batch=hints[0], query_len=hints[1], capacity=hints[2], page_size=0)
        self.tuning_targets.append((plan.spec, shape, device))

    def uuid(self):
        # None makes Inductor bypass its FX-graph and AOT caches for graphs we compile: a cache hit would skip
        # this pass and leave compile_report() without the records of those sites.
        return None

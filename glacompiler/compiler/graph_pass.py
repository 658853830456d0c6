"""The graph pass: find attention sites in the ATen graph Inductor is about to compile, plan each, rewrite
those that match exactly into glacompiler.attention_with_kvcache, and record every site in the report.

It runs as Inductor's joint_custom_pre_pass: on the functional ATen graph right after AOT tracing, before
Inductor's own joint-graph patterns (so none of them can touch a site first) and before partitioning."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import os
from pathlib import Path
from typing import Optional

import torch
from torch import fx
from torch._dynamo.utils import counters
from torch._inductor.custom_graph_pass import CustomGraphPass

from ..op.validation import debug_checks_enabled
from ..spec import ProblemShape
from .absorb import NotLatent, emit_absorbed, plan_absorption
from .decline import Decline
from .find.sites import find_sites
from .inductor_guard import guard_attention_fusions
from .plan.extensions import describe_extensions
from .plan.site_plan import SitePlan, slots_size
from .report import REWRITTEN, SKIPPED, SiteRecord, add_records, source_location
from .rewrite.emit import SharedMaskRanges, emit_site, mask_handling
from .rewrite.graph_launches import replace_op_calls_with_launches
from .trace.layout import fake_value
from .trace.running_counts import running_counts_as_positions
from .trace.score_mods import split_score_baddbmm


# The report rows the pass writes itself, in a Decline's form: what was seen; to fuse: what would let it fuse.
TRAINING_REASON = ("the graph computes gradients (training): the op has no backward; to fuse: run decoding under "
                   "torch.no_grad() or torch.inference_mode()")
REWRITE_OFF_REASON = "rewriting is disabled; to fuse: glacompiler.backend(rewrite=True) (the default)"


def internal_error_reason(error: Exception) -> str:
    return (f"internal error in the gla pass: {error!r} (the graph was compiled without the pass); to fuse: "
            "nothing in the model, this is a bug in glacompiler: please report it with this line "
            "(GLACOMPILER_STRICT=1 raises it with its traceback)")


def not_absorbed_reason(reason: str) -> str:
    """The note on a site fused in its expanded form that is a latent expansion (MLA/GLA) left unabsorbed."""
    return f"not absorbed: {reason}"


class GlaPassError(RuntimeError):
    """An unexpected error inside our pass; the backend recompiles the graph without the pass."""


def strict_mode() -> bool:
    """GLACOMPILER_STRICT=1: an unexpected error in the pass (or in online tuning) propagates to the user's
    compile instead of falling back to Inductor alone with a warning. Sites the pass declines are still
    skipped and reported: a decline is an answer, not an error."""
    return os.environ.get("GLACOMPILER_STRICT", "0") not in ("", "0")


def is_training_graph(graph: fx.Graph) -> bool:
    return any(node.op == "placeholder" and node.name.startswith("tangents") for node in graph.nodes)


# What decides the pass's output besides its options: the compiler package, the specs, and the op (its
# schema, fake implementation and the input checks the plan reuses).
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent
_SOURCE_GLOBS = ("compiler/**/*.py", "spec.py", "op/*.py")
_OPS = ("attention_with_kvcache", "mask_key_range")


def source_hash(root: Path, patterns=_SOURCE_GLOBS, ops=_OPS) -> str:
    """A hash of the files under root that match patterns (names and contents) and of the ops' schemas."""
    hasher = hashlib.sha256()
    for path in sorted({path for pattern in patterns for path in root.glob(pattern)}):
        hasher.update(path.relative_to(root).as_posix().encode() + b"\0")
        hasher.update(path.read_bytes() + b"\0")
    for name in ops:
        hasher.update(str(getattr(torch.ops.glacompiler, name).default._schema).encode() + b"\0")
    return hasher.hexdigest()


@functools.lru_cache(maxsize=1)
def pass_source_hash() -> str:
    """The package version and source_hash of this installation, once per process (the sources do not change
    under a running pass)."""
    try:
        version = importlib.metadata.version("glacompiler")
    except importlib.metadata.PackageNotFoundError:  # a source checkout used in place
        version = "source"
    return f"{version}-{source_hash(_PACKAGE_ROOT)}"


@functools.lru_cache(maxsize=1)
def _kernel_sources_hash() -> str:
    """The kernels' sources and templates and the table lookup's code, once per process (they do not change under
    a running pass)."""
    from ..package_data import shipped_folder

    hasher = hashlib.sha256(source_hash(_PACKAGE_ROOT, ("kernels/**/*.py", "tables/*.py"), ()).encode())
    hasher.update(source_hash(Path(str(shipped_folder("templates"))), ("**/*.jinja",), ()).encode())
    return hasher.hexdigest()


def launch_plans_hash() -> str:
    """What a graph with our launches in it also depends on: _kernel_sources_hash, and the tuned configs this
    process's lookups answer from (the parsed tables of the current GPU, as loaded: a table rewritten since is
    read by the next process, whose key then differs)."""
    from ..tables.lookup import device_name, index_for_gpu

    hasher = hashlib.sha256(_kernel_sources_hash().encode())
    if torch.cuda.is_available():  # (graphs of CPU tensors hold no launches)
        hasher.update(index_for_gpu(device_name(torch.cuda.current_device())).digest.encode())
    return hasher.hexdigest()[:16]


def as_passes(configured) -> tuple:
    """Inductor's custom-pass settings take None, a pass, or a list of passes."""
    if configured is None:
        return ()
    return tuple(configured) if isinstance(configured, (list, tuple)) else (configured,)


class AttentionRewritePass(CustomGraphPass):
    def __init__(self, rewrite: bool = True, chained: Optional[object] = None, graph_name: str = "",
                 graph_launches: bool = False, latent_rows_in_graph: int = 0):
        self.rewrite = rewrite
        # Replace op calls whose kernels Inductor can launch by those launches (rewrite/graph_launches.py); not
        # with GLACOMPILER_DEBUG=1, whose value checks run in the op. Hopper latent calls of at most
        # latent_rows_in_graph query rows per latent head take the portable kernels to be launched so.
        self.graph_launches = graph_launches and not debug_checks_enabled()
        self.latent_rows_in_graph = latent_rows_in_graph
        self.launched_in_graph = 0  # op calls so replaced, over the graphs this pass ran on
        self.chained = chained  # a joint_custom_pre_pass the user had configured: run after ours
        self.graph_name = graph_name
        self.records: list = []
        self.tuning_targets: list = []  # (AttentionSpec, ProblemShape, device) of rewritten CUDA sites
        self.calls = 0  # graphs this pass ran on (none when Inductor served the graph from its caches)

    def __call__(self, graph: fx.Graph) -> None:
        self.calls += 1
        guard_attention_fusions()
        records = []
        try:
            self._run(graph, records)
        except Exception as error:
            # Sites already rewritten in this graph are void: the backend recompiles it without our pass.
            reason = internal_error_reason(error)
            records = [
                SiteRecord(r.kind, r.spec, r.source, SKIPPED, reason, r.form, r.graph) for r in records
            ] or [SiteRecord(None, None, self.graph_name or "graph", SKIPPED, reason, "", self.graph_name)]
            add_records(records)
            raise GlaPassError(str(error)) from error
        add_records(records)
        self.records.extend(records)
        for chained in as_passes(self.chained):
            chained(graph)

    def _run(self, graph: fx.Graph, records: list) -> None:
        training = is_training_graph(graph)
        mask_ranges = SharedMaskRanges(graph)
        if not training:
            split_score_baddbmm(graph)  # BLOOM's scores: a product plus its ALiBi bias, in one baddbmm
            running_counts_as_positions(graph)  # BLOOM's key positions on transformers 5.17: a count of ones
        for site in find_sites(graph):
            source = source_location(site.anchor)
            if training:
                records.append(SiteRecord(None, None, source, SKIPPED, TRAINING_REASON, site.form, self.graph_name))
                continue
            absorbed, not_absorbed = self._absorption(site, source)
            if absorbed is not None:
                emit_absorbed(graph, absorbed, mask_ranges)
                self._note_tuning_target(dataclasses.replace(absorbed.site, spec=absorbed.spec))
                records.append(SiteRecord(absorbed.spec.kind, absorbed.spec, source, REWRITTEN, "",
                                          f"{site.form}{describe_extensions(absorbed.site)} (absorbed)", self.graph_name,
                                          mask_handling(absorbed.site)))
                continue
            try:
                plan = site.plan()
            except Decline as decline:
                spec = decline.spec
                records.append(SiteRecord(spec.kind if spec else None, spec, source, SKIPPED,
                                          decline.explain(source, source_location), site.form, self.graph_name))
                continue
            if not self.rewrite:
                records.append(SiteRecord(plan.spec.kind, plan.spec, source, SKIPPED, REWRITE_OFF_REASON,
                                          site.form, self.graph_name))
                continue
            emit_site(graph, plan, mask_ranges)
            self._note_tuning_target(plan)
            records.append(SiteRecord(plan.spec.kind, plan.spec, source, REWRITTEN, not_absorbed,
                                      site.form + describe_extensions(plan), self.graph_name, mask_handling(plan)))
        if self.graph_launches and not training:  # (op calls the user wrote themselves too)
            launched = replace_op_calls_with_launches(graph, self.latent_rows_in_graph)
            self.launched_in_graph += launched
            counters["glacompiler"]["launched_in_graph"] += launched
        graph.lint()

    def _absorption(self, site, source: str) -> tuple:
        """(AbsorbedPlan or None, why a latent expansion stays expanded and what would absorb it: '' when the
        site is not one)."""
        if not self.rewrite:
            return None, ""
        try:
            return plan_absorption(site), ""
        except NotLatent:
            return None, ""
        except Decline as decline:
            return None, not_absorbed_reason(decline.explain(source, source_location, goal="absorb"))
        except Exception as error:  # nothing was changed yet: the site is still fused as written
            if strict_mode():
                raise
            return None, not_absorbed_reason(
                f"internal error in the absorption check: {error!r} (the site is fused in its expanded form); to "
                "absorb: nothing in the model, this is a bug in glacompiler: please report it with this line")

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

    def uuid(self) -> Optional[str]:
        """Inductor's FX-graph and AOTAutograd caches key compiled graphs by this: a stable hash of what decides
        the pass's output (its sources, the op schemas, the options, the user pass chained after ours).
        The graph's name is left out: it only labels records, which the backend restores on a cache hit
        (record_store.py). None (no caching) when a chained user pass has no uuid of its own."""
        chained_ids = []
        for chained in as_passes(self.chained):
            chained_id = chained.uuid() if isinstance(chained, CustomGraphPass) else None
            if chained_id is None:
                return None
            chained_ids.append(repr(chained_id))
        launches = (f" graph_launches={launch_plans_hash()} latent_rows_in_graph={self.latent_rows_in_graph}"
                    if self.graph_launches else "")
        return f"glacompiler {pass_source_hash()} rewrite={self.rewrite}{launches} chained=[{','.join(chained_ids)}]"

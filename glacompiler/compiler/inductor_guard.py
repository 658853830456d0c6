"""Keep Inductor's own attention fusion away from graphs compiled by the gla backend.

Inductor's fuse_attention patterns (torch/_inductor/fx_passes/fuse_attention.py) are stored pre-traced
("serialized_patterns/_sfdp_pattern_*.py") and every int argument was recorded as Ignored(): the softmax's
reduction dims (amax/sum) and the key's permute dims match anything. So
`((q @ k.transpose(-1, -2)) / sqrt(d)).softmax(dim=1) @ v` is rewritten into SDPA, which normalises over
the keys instead of dim 1, and the compiled result is silently wrong (reproduced on torch 2.13 CPU,
tests/test_backend_inductor_guard.py; upstream pytorch/pytorch#196468, open; the permuted-key variant is
#195320). The patterns have been serialized this way since they were introduced, so every release we
support (2.11 to 2.13) carries it.

Our pass handles attention itself, so while the gla backend compiles, every pattern entry of Inductor's
joint-graph passes that consumes a softmax between two batched products refuses to match. Entries are
recognised by what they match (amax + exp + bmm in the pattern), not by name, so renamed or new attention
patterns are covered too. Outside the gla backend the entries behave exactly as before."""
from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from ..context_flag import ContextFlag

aten = torch.ops.aten

_GLA_COMPILING = ContextFlag("glacompiler_compiling")

_SOFTMAX_TARGETS = {aten.amax.default, aten.exp.default}
_ATTENTION_TARGETS = {aten._softmax.default, aten._safe_softmax.default}
_PRODUCT_TARGETS = {aten.bmm.default, aten.mm.default, aten.matmul.default}


def _pattern_targets(pattern, found: set, seen: set) -> None:
    if id(pattern) in seen:
        return
    seen.add(id(pattern))
    for fn in getattr(pattern, "fns", ()) or ():
        found.add(fn)
    children = []
    for name in ("args", "outputs"):
        value = getattr(pattern, name, None)
        if isinstance(value, (list, tuple)):
            children.extend(value)
    kwargs = getattr(pattern, "kwargs", None)
    if isinstance(kwargs, dict):
        children.extend(kwargs.values())
    inner = getattr(pattern, "pattern", None)
    if inner is not None:
        children.append(inner)
    for child in children:
        if isinstance(child, (list, tuple)):
            for item in child:
                _pattern_targets(item, found, seen)
        elif child is not None and not isinstance(child, (int, float, str, bool)):
            _pattern_targets(child, found, seen)


def is_attention_fusion(entry) -> bool:
    """A pattern entry that replaces softmax(products) @ product, i.e. an attention fusion."""
    targets: set = set()
    _pattern_targets(getattr(entry, "pattern", None), targets, set())
    has_softmax = _SOFTMAX_TARGETS <= targets or bool(_ATTENTION_TARGETS & targets)
    return has_softmax and bool(_PRODUCT_TARGETS & targets)


def _refuse_under_gla(check):
    def extra_check(match):
        if _GLA_COMPILING.is_set():
            counters["glacompiler"]["inductor_attention_fusion_refused"] += 1
            return False
        return check(match)

    extra_check.glacompiler_guarded = True
    return extra_check


def _pattern_passes() -> list:
    """Inductor's pattern passes, deduplicated (fuse_attention registers into joint_graph.patterns; the
    others are checked too so that a future home of attention patterns is covered)."""
    from torch._inductor.fx_passes import joint_graph, post_grad

    found = []
    for module, name in ((joint_graph, "patterns"), (joint_graph, "pass_patterns"), (joint_graph, "early_patterns"),
                         (post_grad, "pass_patterns")):
        value = getattr(module, name, None)
        for candidate in value if isinstance(value, (list, tuple)) else [value]:
            if candidate is not None and all(candidate is not seen for seen in found):
                found.append(candidate)
    return found


# Pattern entries already classified, by id (the entry is kept too, so an id is never reused): classifying
# walks each pattern tree, ~0.4 s for Inductor's ~200 entries, which every compiled graph would pay again.
_classified: dict = {}


def _classified_as_fusion(entry) -> bool:
    known = _classified.get(id(entry))
    if known is None or known[0] is not entry:
        known = (entry, is_attention_fusion(entry))
        _classified[id(entry)] = known
    return known[1]


def guard_attention_fusions() -> int:
    """Wrap every attention-fusion entry registered so far (idempotent); returns how many are guarded."""
    guarded = 0
    for patterns in _pattern_passes():
        for entries in getattr(patterns, "patterns", {}).values():
            for entry in entries:
                if not _classified_as_fusion(entry):
                    continue
                if not getattr(entry.extra_check, "glacompiler_guarded", False):
                    entry.extra_check = _refuse_under_gla(entry.extra_check)
                guarded += 1
    return guarded


# `with inductor_attention_fusion_disabled():` around a gla compile: the guarded entries refuse to match inside.
inductor_attention_fusion_disabled = _GLA_COMPILING.raised
gla_compiling = _GLA_COMPILING.is_set  # (also read by programmatic_launch.py)


def compile_inner_under_gla(gm, example_inputs, **kwargs):
    """Inductor's compile_fx_inner with the flag raised, for compile_fx's inner_compile: AOTAutograd calls it for a
    backward graph lazily, at the first backward, outside the backend's call and its with-block."""
    from torch._inductor.compile_fx import compile_fx_inner

    with _GLA_COMPILING.raised():
        return compile_fx_inner(gm, example_inputs, **kwargs)

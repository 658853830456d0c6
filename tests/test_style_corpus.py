"""The style corpus (tests/style_corpus.py): decode attention written the ways people write it. Every positive
is rewritten into exactly one glacompiler op of the right kind, every negative is left alone (and reported as
skipped where it is attention-shaped), and every case computes what eager computes (fp32, CPU).

Cases are traced in groups (one dynamo + AOT trace per group, each case on its own inputs), which keeps the
corpus to a fraction of the CI budget; the report's source line tells which case a site belongs to."""
import functools

import pytest
import torch

from style_corpus import corpus
from test_backend_support import GLA_OP, PassHarness, assert_close

GROUP_SIZE = 12

# Issue 12 section 5: what each negative's skip reason must say (what was seen; the record also names the case's
# source line and, after "; to fuse: ", what would let it fuse).
NEGATIVE_REASONS = {
    "softmax_over_heads": ["softmax runs over dim"],
    "softmax_over_queries": ["softmax runs over dim"],
    "probs_returned": ["probabilities", "used by 2 nodes"],
    "router_einsum": ["not contiguous"],  # the experts read as V: [E, W, HQ * D] has no head dim of its own
    "values_by_query": ["V varies along a query row", "used by 2 nodes"],
    "fill_not_negligible": ["still takes part in the softmax"],
    "negative_scale": ["needs a positive scale"],
}
INPUTS_PER_CASE = 6


@functools.lru_cache(maxsize=1)
def all_cases() -> list:
    return corpus()


def groups() -> list:
    cases = all_cases()
    return [cases[start:start + GROUP_SIZE] for start in range(0, len(cases), GROUP_SIZE)]


def test_corpus_size_and_spread():
    cases = all_cases()
    positives = [c for c in cases if not c.style.negative]
    assert len(positives) >= 300 and len(cases) - len(positives) >= 20
    for axis in ("kernel", "query", "layout", "write", "sharing", "scale", "mask", "softmax", "output"):
        values = {getattr(c.style, axis) for c in positives}
        assert len(values) >= 2, axis
    assert {c.style.dims.name for c in positives} >= {"head_dim_eq_cache_len", "heads_x_dim_eq_cache_len_eq_width",
                                                      "batch_eq_heads", "mha", "mqa"}


def _run_group(cases: list):
    def step(*flat):
        return [case.fn(*flat[i * INPUTS_PER_CASE:(i + 1) * INPUTS_PER_CASE]) for i, case in enumerate(cases)]

    generator = torch.Generator().manual_seed(cases[0].index)
    inputs = [tensor for case in cases for tensor in case.inputs(generator)]
    eager_inputs = [t.clone() for t in inputs]
    harness = PassHarness(step)
    compiled_out = harness(*inputs)
    with torch.no_grad():
        eager_out = step(*eager_inputs)
    return harness.result(), compiled_out, eager_out, inputs, eager_inputs


@pytest.mark.slow  # a group of 12 cases traces in 5-10 s
@pytest.mark.parametrize("group", range(len(groups())))
def test_style_group(group):
    cases = groups()[group]
    result, compiled_out, eager_out, inputs, eager_inputs = _run_group(cases)
    records = {case.index: [r for r in result.records if r.location.startswith(case.filename + ":")]
               for case in cases}
    unplaced = [r for r in result.records if not any(r in found for found in records.values())]
    assert not unplaced, [str(r) for r in unplaced]
    problems = []
    for case in cases:
        found = records[case.index]
        kind = case.expected_kind
        if kind is not None:
            if [(r.status, r.kind) for r in found] != [("rewritten", kind)]:
                problems.append((case, f"expected one {kind} site rewritten, got {[str(r) for r in found]}"))
        elif any(r.status != "skipped" for r in found):
            problems.append((case, f"a negative was rewritten: {[str(r) for r in found]}"))
        elif not all(any(part in r.reason for part in NEGATIVE_REASONS[case.style.negative]) and "; to fuse: " in r.reason
                     for r in found) or not found:
            problems.append((case, f"the skip does not say what was seen and what would fuse: {[str(r) for r in found]}"))
    for position, case in enumerate(cases):
        ours, theirs = compiled_out[position], eager_out[position]
        ours, theirs = (ours, theirs) if isinstance(ours, (tuple, list)) else ((ours,), (theirs,))
        for a, b in zip(ours, theirs):
            try:
                if case.expected_kind is None:  # a negative may give NaN where eager does (e.g. a softmax over
                    # heads whose scores are all masked): untouched, it must give the same NaN
                    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, equal_nan=True)
                else:
                    assert_close(a, b, tol=1e-4)
            except AssertionError as error:
                problems.append((case, f"differs from eager: {str(error).splitlines()[0:3]}"))
    # Caches written in place hold the same after the step.
    for a, b in zip(inputs, eager_inputs):
        assert torch.equal(a, b)
    positives = sum(1 for case in cases if case.expected_kind is not None)
    if not problems:
        assert result.after["gla"] == positives, (result.before, result.after)
        assert len(result.op_calls()) == positives
        assert all(node.target is GLA_OP for node in result.op_calls())
    report = "\n\n".join(f"case {c.index} {c.style.describe()}: {why}\n{c.source}" for c, why in problems)
    assert not problems, f"{len(problems)} of {len(cases)} cases wrong:\n{report}"

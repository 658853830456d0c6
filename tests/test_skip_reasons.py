"""Issue 12 section 5: a skip reason says what the pass saw, where (the record's source line is the user's
line; a node elsewhere adds its own), and what would let the site fuse ("; to fuse: ..."). The corpus's
negatives (tests/test_style_corpus.py) check theirs; these are the other reasons a user meets."""
import math

import pytest
import torch
import torch.nn.functional as F

from test_backend_patterns import B, D, GROUP, HKV, HQ, S, randn, repeat_kv
from test_backend_support import assert_close, run_pass


def prefill(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def float64_attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def scores_returned(q, k, v):
    scores = q @ repeat_kv(k, GROUP).transpose(-1, -2) / math.sqrt(D)
    return scores.softmax(-1) @ repeat_kv(v, GROUP), scores


def mask_per_head(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def logsumexp_used(q, k, v):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, repeat_kv(k, GROUP), repeat_kv(v, GROUP))
    return out, lse


def sdpa_dropout(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, enable_gqa=True)


def inputs(query_len=1, dtype=torch.float32):
    return randn(B, HQ, query_len, D, dtype=dtype), randn(B, HKV, S, D, dtype=dtype), randn(B, HKV, S, D, dtype=dtype)


CASES = {
    # name: (function, inputs, what the reason says, what it says would fuse, output deterministic)
    "prefill": (prefill, lambda: inputs(query_len=20), "query length 20 > 16 (prefill)", "decode steps", True),
    "float64": (float64_attention, lambda: inputs(dtype=torch.float64), "not one supported dtype",
                "float16, bfloat16, float32", True),
    "scores_returned": (scores_returned, inputs, "the scores are also used by", "only for the softmax", True),
    "mask_per_head": (mask_per_head, lambda: (*inputs(), torch.rand(B, HQ, 1, S) < 0.8),
                      "varies along several score dims",
                      "one mask for all heads", True),
    "logsumexp_used": (logsumexp_used, inputs, "logsumexp", "use only the attention output", True),
    # CPU tracing takes SDPA's math path: the dropout is a multiply of the probabilities
    "dropout": (sdpa_dropout, inputs, "(dropout or reweighting)", "dropout_p=0", False),
}


@pytest.mark.parametrize("name", list(CASES))
def test_reason_says_what_where_and_what_would_fuse(name):
    fn, make_inputs, seen, fix, deterministic = CASES[name]
    torch.manual_seed(0)
    args = make_inputs()
    result = run_pass(fn, *args)
    assert result.statuses == ["skipped"] and result.after["gla"] == 0, result.reasons
    record = result.records[0]
    assert seen in record.reason and "; to fuse: " in record.reason, record.reason
    assert fix in record.reason.split("; to fuse: ", 1)[1], record.reason
    assert record.location.startswith("test_skip_reasons.py:") and f"in {fn.__name__}" in record.location
    if deterministic:
        with torch.no_grad():
            expected = fn(*args)
        for ours, theirs in zip(*(x if isinstance(x, tuple) else (x,) for x in (result.output, expected))):
            assert_close(ours, theirs)


def test_reason_names_the_line_of_a_node_elsewhere():
    """A mask that varies per head, built in another function: the reason names that function's line."""
    def build_mask(valid):
        return ~valid[:, :, None, :]  # [B, HQ, 1, S]: per head

    def attend(q, k, v, valid):
        scores = (q @ repeat_kv(k, GROUP).transpose(-1, -2)) * D ** -0.5
        scores = scores.masked_fill(build_mask(valid), float("-inf"))
        return scores.softmax(-1) @ repeat_kv(v, GROUP)

    torch.manual_seed(0)
    q, k, v = inputs()
    valid = torch.rand(B, HQ, S) < 0.8
    valid[..., 0] = True
    result = run_pass(attend, q, k, v, valid)
    assert result.statuses == ["skipped"], result.reasons
    reason = result.records[0].reason
    assert "in build_mask)" in reason and "; to fuse: one mask for all heads" in reason, reason
    assert_close(result.output, attend(q, k, v, valid))

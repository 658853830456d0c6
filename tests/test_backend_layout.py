"""Issue 12 section 1: the layout analysis follows a query (and K, V) straight from a projection, where the
heads and the head dim are two runs of ONE axis of the projection's output, through any chain of views,
splits and prefix slices; sizes that coincide cannot make it confuse two axes."""
import math

import pytest
import torch
import torch.nn.functional as F

import glacompiler

from glacompiler.compiler.trace.layout import Piece, prefix_of_dim
from test_backend_support import assert_close, repeat_kv, run_pass


def test_prefix_of_a_dim_made_of_two_runs():
    # A [3, 8] dim (a view of one axis of 24): its first 16 entries are the first 2 of the major run, whole
    # minor runs; the first 4 are a prefix of the minor run, the major one read at index 0.
    dim = (Piece(0, 3, 8), Piece(0, 8, 1))
    assert prefix_of_dim(dim, 16) == (Piece(0, 2, 8), Piece(0, 8, 1))
    assert prefix_of_dim(dim, 4) == (Piece(0, 4, 1),)
    assert prefix_of_dim(dim, 24) == dim
    assert prefix_of_dim(dim, 12) is None  # 1.5 rows of 8: no product of runs


# (batch, heads, kv heads, head dim, cache length, width): sizes that coincide
SHAPES = {
    "plain": (2, 4, 2, 8, 12, 32),
    "head_dim_eq_cache_len": (2, 4, 2, 16, 16, 32),
    "heads_x_dim_eq_cache_len_eq_width": (2, 4, 2, 8, 32, 32),
    "batch_eq_heads_eq_kv_heads": (4, 4, 4, 8, 12, 32),
}


def sdpa_from_linear(x, w_q, k_cache, v_cache):
    batch, length, _ = x.shape
    heads, dim = w_q.shape[0] // k_cache.shape[-1], k_cache.shape[-1]
    q = F.linear(x, w_q).view(batch, length, heads, dim).transpose(1, 2)
    return F.scaled_dot_product_attention(q, k_cache, v_cache, enable_gqa=True)


def manual_from_linear(x, w_q, k_cache, v_cache):
    batch, length, _ = x.shape
    dim = k_cache.shape[-1]
    heads = w_q.shape[0] // dim
    q = F.linear(x, w_q).view(batch, length, heads, dim).transpose(1, 2)
    k = k_cache.repeat_interleave(heads // k_cache.shape[1], dim=1)
    v = v_cache.repeat_interleave(heads // v_cache.shape[1], dim=1)
    return torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim), dim=-1) @ v


def fused_qkv_unbind(x, w_qkv, k_cache, v_cache):
    """One projection viewed as [B, L, 3, H, D], the query its first part (MHA)."""
    batch, length, _ = x.shape
    heads, dim = k_cache.shape[1], k_cache.shape[-1]
    q = F.linear(x, w_qkv).view(batch, length, 3, heads, dim).unbind(2)[0]
    return F.scaled_dot_product_attention(q.transpose(1, 2), k_cache, v_cache)


def fused_qkv_narrow(x, w_qkv, k_cache, v_cache):
    """The query as a narrow() of a fused projection, then split into heads."""
    batch, length, _ = x.shape
    heads, dim = k_cache.shape[1], k_cache.shape[-1]
    q = F.linear(x, w_qkv).narrow(-1, 0, heads * dim).view(batch, length, heads, dim)
    scores = torch.einsum("blhd,bhsd->bhls", q, k_cache) * dim ** -0.5
    return torch.einsum("bhls,bhsd->blhd", scores.softmax(-1), v_cache)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("attend", [sdpa_from_linear, manual_from_linear])
def test_query_straight_from_a_projection(attend, shape):
    batch, heads, kv_heads, dim, length, width = SHAPES[shape]
    torch.manual_seed(0)
    x, w_q = torch.randn(batch, 1, width), torch.randn(heads * dim, width) / math.sqrt(width)
    k_cache, v_cache = torch.randn(batch, kv_heads, length, dim), torch.randn(batch, kv_heads, length, dim)
    result = run_pass(attend, x, w_q, k_cache, v_cache)
    assert result.statuses == ["rewritten"], result.reasons
    assert result.records[0].kind == ("mha" if heads == kv_heads else "gqa")
    assert_close(result.output, attend(x, w_q, k_cache, v_cache))


def fused_qkv_per_head_split(x, w_qkv, k_cache, v_cache):
    """GPT-NeoX's layout: [B, L, H, 3 * D] per head, the query the first D channels of each head (a prefix of
    each head's block of one axis)."""
    batch, length, _ = x.shape
    heads, dim = k_cache.shape[1], k_cache.shape[-1]
    q = F.linear(x, w_qkv).view(batch, length, heads, 3 * dim).split(dim, dim=-1)[0]
    return F.scaled_dot_product_attention(q.transpose(1, 2), k_cache, v_cache)


@pytest.mark.parametrize("attend", [fused_qkv_unbind, fused_qkv_narrow, fused_qkv_per_head_split])
def test_query_as_the_first_part_of_a_fused_projection(attend):
    batch, heads, dim, length, width = 2, 4, 8, 32, 32
    torch.manual_seed(0)
    x, w_qkv = torch.randn(batch, 1, width), torch.randn(3 * heads * dim, width) / math.sqrt(width)
    k_cache, v_cache = torch.randn(batch, heads, length, dim), torch.randn(batch, heads, length, dim)
    result = run_pass(attend, x, w_qkv, k_cache, v_cache)
    assert result.statuses == ["rewritten"], result.reasons
    assert_close(result.output, attend(x, w_qkv, k_cache, v_cache))


def test_runs_with_a_gap_that_is_not_a_block_prefix_are_declined():
    """A query read every other channel (a step-2 run at the inside) has no view the op takes: declined."""
    def every_other_channel(x, w_q, k_cache, v_cache):
        batch, length, _ = x.shape
        heads, dim = k_cache.shape[1], k_cache.shape[-1]
        q = F.linear(x, w_q).view(batch, length, heads, dim, 2)[..., 0]
        return F.scaled_dot_product_attention(q.transpose(1, 2), k_cache, v_cache)

    batch, heads, dim, length, width = 2, 4, 8, 12, 32
    torch.manual_seed(0)
    x, w_q = torch.randn(batch, 1, width), torch.randn(2 * heads * dim, width) / math.sqrt(width)
    k_cache, v_cache = torch.randn(batch, heads, length, dim), torch.randn(batch, heads, length, dim)
    result = run_pass(every_other_channel, x, w_q, k_cache, v_cache)
    assert_close(result.output, every_other_channel(x, w_q, k_cache, v_cache))
    assert result.statuses == ["skipped"], result.reasons


def test_scores_and_values_over_a_prefix_of_the_keys():
    """Scores sliced to the first keys, with V sliced alike (the slice reaches the scores through a cast in
    half-precision models): attention over a shorter cache, read in place."""
    def prefix_of_keys(q, k_cache, v_cache):
        keep = k_cache.shape[2] - 5
        scores = (q @ k_cache.transpose(-1, -2))[..., :keep].float()
        return scores.softmax(-1).to(q.dtype) @ v_cache[:, :, :keep]

    torch.manual_seed(0)
    q, k_cache, v_cache = torch.randn(2, 4, 1, 8), torch.randn(2, 4, 24, 8), torch.randn(2, 4, 24, 8)
    result = run_pass(prefix_of_keys, q, k_cache, v_cache)
    assert result.statuses == ["rewritten"], result.reasons
    assert_close(result.output, prefix_of_keys(q, k_cache, v_cache))


def _grouped(x):
    return repeat_kv(x, 2)


def key_cast_by_autocast(q, k, v, lengths):
    valid = (torch.arange(k.shape[2])[None] < lengths[:, None])[:, None, None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = q @ _grouped(k).transpose(-1, -2) * q.shape[-1] ** -0.5
        return F.softmax(scores.masked_fill(~valid, float("-inf")), -1) @ _grouped(v)


def key_cast_after_its_transpose(q, k, v, lengths):
    valid = (torch.arange(k.shape[2])[None] < lengths[:, None])[:, None, None]
    scores = q.bfloat16() @ _grouped(k).transpose(-1, -2).bfloat16() * q.shape[-1] ** -0.5
    return F.softmax(scores.masked_fill(~valid, float("-inf")), -1) @ _grouped(v).bfloat16()


@pytest.mark.parametrize("fn", [key_cast_by_autocast, key_cast_after_its_transpose])
def test_a_key_cast_after_its_transpose_reaches_the_op_in_its_traced_strides(fn):
    """The cast of a transposed key is an intermediate that Inductor lays out as it likes (here contiguous, where
    the traced cast kept the transposed strides). The op's inputs carry their traced values (Inductor's
    eager_input_vals), so Inductor hands the op the key in those strides; without them the op was handed a view
    with a key stride of 16 and raised at run time (a helper's adversarial run)."""
    from test_backend_support import compile_and_count

    generator = torch.Generator().manual_seed(3)
    args = (torch.randn(2, 4, 1, 8, generator=generator), torch.randn(2, 2, 16, 8, generator=generator),
            torch.randn(2, 2, 16, 8, generator=generator), torch.tensor([5, 13]))
    output, _, records = compile_and_count(fn, *args)
    assert [record.status for record in records] == ["rewritten"], [record.reason for record in records]
    with torch.no_grad():
        expected = fn(*args).float()
    assert (output.float() - expected).abs().max() <= 2e-2 * expected.abs().max()


def test_a_key_sliced_from_a_packed_projection_passes_the_absorption_check():
    """nn.MultiheadAttention reads K and V as prefix slices of one packed projection: the absorption check (is this
    an expanded latent?) viewed the key without its prefix and failed inside (an internal error in the report)."""
    from test_backend_support import compile_and_count

    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()

    def attend(query, memory):
        return attention(query, memory, memory, need_weights=False)[0]

    args = (torch.randn(2, 1, 32), torch.randn(2, 16, 32))
    output, _, records = compile_and_count(attend, *args)
    assert [(record.status, record.reason) for record in records] == [("rewritten", "")]
    with torch.no_grad():
        assert_close(output, attend(*args), tol=1e-5)


_QUERY_WEIGHT = torch.randn(32, 64, generator=torch.Generator().manual_seed(5)) * 0.2
_QUERY_NORM = torch.rand(16, generator=torch.Generator().manual_seed(6)) + 0.5


def _mqa_with_normed_query_rows(x, k_cache, v_cache, lengths=None):
    """Per-head RMSNorm of the query on rows [B * Hq, D] (Qwen3's q_norm over flattened rows): q's batch and
    heads are one axis of the norm's output. 4 query heads of 16."""
    batch = x.shape[0]
    q = (x @ _QUERY_WEIGHT).view(batch * 4, 16)
    q = (q * torch.rsqrt(q.pow(2).mean(-1, keepdim=True) + 1e-6) * _QUERY_NORM).view(batch, 4, 1, 16)
    mask = None
    if lengths is not None:
        mask = (torch.arange(k_cache.shape[2])[None] < lengths[:, None])[:, None, None]
    return F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=mask, enable_gqa=True)


@pytest.mark.parametrize("with_lengths, dynamic", [(True, False), (False, True)])
def test_mqa_whose_query_rows_hold_batch_and_heads(with_lengths, dynamic):
    """MQA at batch 3: the one dim where q and k both vary is the batch (the scores' first dim), even where q's
    batch and heads share an axis. A rule that read the query heads' split off q's axes took it for KV heads: GQA
    12/3 at batch 1, then declined for its per-sequence mask, or for a symbolic head count with a dynamic batch (a
    helper's review)."""
    generator = torch.Generator().manual_seed(7)
    torch._dynamo.reset()
    glacompiler.reset_report()
    compiled = torch.compile(_mqa_with_normed_query_rows, backend="gla", dynamic=dynamic)
    for batch in (3, 5) if dynamic else (3,):
        args = (torch.randn(batch, 32, generator=generator), torch.randn(batch, 1, 12, 16, generator=generator),
                torch.randn(batch, 1, 12, 16, generator=generator),
                torch.tensor([5, 9, 12, 1, 7][:batch]) if with_lengths else None)
        with torch.no_grad():
            assert_close(compiled(*args), _mqa_with_normed_query_rows(*args), tol=1e-5)
    records = glacompiler.compile_report()
    assert {(r.status, r.kind, r.spec and r.spec.num_q_heads, r.spec and r.spec.num_kv_heads) for r in records} == {
        ("rewritten", "mqa", 4, 1)}, [str(r) for r in records]

"""Masks that vary per KV head: T5's position bias ([1, H, Lq, S], added), MPT's precomputed ALiBi buffer (a
[1, H, 1, S_max] bias sliced to the keys), a boolean mask per head. The op takes a mask broadcastable to
[B, Hq, Lq, S]; the pass lays such a mask out per query head (KV head major, expanded over each group). Each is
compared with eager; masks that rule out different keys in different heads show a head read with another's mask.
A mask per query head of a GQA group ([B, Hq, Lq, S] over scores whose heads axis holds the KV head and the group:
SDPA's enable_gqa, repeat_kv) reaches the op as it is, its heads axis split into KV head and group."""
import math

import pytest
import torch
import torch.nn.functional as F

from test_backend_support import check_rewritten, compile_and_count

B, H, S, D = 2, 4, 24, 16
GLACOMPILER_LENGTHS, GLACOMPILER_MASK = 5, 7  # the op call's cache_seqlens and attn_mask arguments


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def mha_inputs(query_len=1, seed=0):
    g = generator(seed)
    return (torch.randn(B, H, query_len, D, generator=g) * 2, torch.randn(B, H, S, D, generator=g),
            torch.randn(B, H, S, D, generator=g))


def keep_per_head(query_len=1, seed=1):
    keep = torch.rand(B, H, query_len, S, generator=generator(seed)) > 0.4
    keep[..., 0] = True
    return keep


def attend(scores, v):
    return torch.softmax(scores, dim=-1) @ v


def bool_mask_per_head(q, k, v, keep):
    scores = q @ k.transpose(-1, -2) * D ** -0.5
    return attend(scores.masked_fill(~keep, -math.inf), v)


def t5_position_bias(q, k, v, bias):
    """T5's decoder: scores (unscaled) plus a learned relative-position bias per head, [1, H, Lq, S]."""
    return attend(q @ k.transpose(-1, -2) + bias, v)


MAX_POSITIONS = 64
SLOPES = torch.tensor([2.0 ** (-(i + 1)) for i in range(H)])
ALIBI_BUFFER = (SLOPES[:, None] * torch.arange(1 - MAX_POSITIONS, 1, dtype=torch.float32))[None, :, None, :]


def mpt_alibi_buffer(q, k, v, valid):
    """MPT: a precomputed [1, H, 1, S_max] ALiBi buffer, its last S keys added, then the padding mask."""
    scores = q @ k.transpose(-1, -2) * D ** -0.5 + ALIBI_BUFFER[..., -k.shape[-2]:]
    return attend(scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min), v)


def per_head_prefix(q, k, v):
    """Each head sees its own prefix of the keys (at one query token: not lengths, which are per sequence)."""
    keep = torch.arange(S)[None, None, None, :] < torch.tensor([3, 9, 17, S])[None, :, None, None]
    return attend((q @ k.transpose(-1, -2) * 0.3).masked_fill(~keep, -math.inf), v)


def grouped_per_kv_head(q, k, v, keep):
    """GQA written with a group dim ([B, Hkv, G, Lq, S] scores) and a mask per KV head [B, Hkv, 1, 1, S]."""
    scores = q @ k.transpose(-1, -2) * D ** -0.5
    return attend(scores.masked_fill(~keep, -math.inf), v)


def two_head_dims(q, k, v, keep):
    """KV heads in two dims ([B, 2, 2, Lq, S]); the mask varies along the first only."""
    return attend((q @ k.transpose(-1, -2) * D ** -0.5).masked_fill(~keep, -math.inf), v)


@pytest.mark.parametrize("query_len", [1, 3])
def test_boolean_mask_per_head(query_len):
    call = check_rewritten(bool_mask_per_head, *mha_inputs(query_len), keep_per_head(query_len)).op_calls()[0]
    assert call.args[GLACOMPILER_MASK] is not None


def test_t5_position_bias():
    bias = torch.randn(1, H, 2, S, generator=generator(2)) * 4
    check_rewritten(t5_position_bias, *mha_inputs(2), bias)


def test_mpt_alibi_buffer():
    valid = torch.arange(S)[None, :] < torch.tensor([11, S])[:, None]
    check_rewritten(mpt_alibi_buffer, *mha_inputs(), valid)


def test_a_prefix_per_head_stays_a_mask():
    call = check_rewritten(per_head_prefix, *mha_inputs()).op_calls()[0]
    assert call.args[GLACOMPILER_LENGTHS] is None and call.args[GLACOMPILER_MASK] is not None


def test_a_mask_per_kv_head_is_expanded_over_its_group():
    g = generator(4)
    kv_heads, group = 2, 3
    q = torch.randn(B, kv_heads, group, 2, D, generator=g) * 2
    k, v = (torch.randn(B, kv_heads, 1, S, D, generator=g) for _ in range(2))
    keep = torch.rand(B, kv_heads, 1, 1, S, generator=g) > 0.4
    keep[..., 0] = True
    check_rewritten(grouped_per_kv_head, q, k, v, keep)


def test_kv_heads_in_two_dims():
    g = generator(5)
    q = torch.randn(B, 2, 2, 1, D, generator=g) * 2
    k, v = (torch.randn(B, 2, 2, S, D, generator=g) for _ in range(2))
    keep = torch.rand(1, 2, 1, 1, S, generator=g) > 0.4
    keep[..., 0] = True
    check_rewritten(two_head_dims, q, k, v, keep)


KV_HEADS, GROUP_SIZE = 2, 4
Q_HEADS = KV_HEADS * GROUP_SIZE


def gqa_inputs(query_len=1, seed=7):
    g = generator(seed)
    return (torch.randn(B, Q_HEADS, query_len, D, generator=g) * 2, torch.randn(B, KV_HEADS, S, D, generator=g),
            torch.randn(B, KV_HEADS, S, D, generator=g))


def per_query_head(shape, dtype, seed=8):
    """A mask per query head: bool (some keys ruled out, key 0 kept) or additive."""
    g = generator(seed)
    if dtype == torch.bool:
        keep = torch.rand(*shape, generator=g) > 0.4
        keep[..., 0] = True
        return keep
    return torch.randn(*shape, generator=g) * 3


def sdpa_gqa(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def repeat_kv_per_head(q, k, v, keep):
    """transformers' eager GQA: K and V repeated per group (repeat_kv), a mask per query head."""
    def repeat(x):
        return x[:, :, None].expand(B, KV_HEADS, GROUP_SIZE, S, D).reshape(B, Q_HEADS, S, D)
    scores = (q @ repeat(k).transpose(-1, -2) * D ** -0.5).masked_fill(~keep, -math.inf)
    return attend(scores, repeat(v))


def tiled_kv_per_head(q, k, v, keep):
    """K and V tiled (query head h reads KV head h % Hkv: the group is the major part of the heads axis)."""
    scores = (q @ k.repeat(1, GROUP_SIZE, 1, 1).transpose(-1, -2) * D ** -0.5).masked_fill(~keep, -math.inf)
    return attend(scores, v.repeat(1, GROUP_SIZE, 1, 1))


def flat_mask_per_head(q, k, v, flat):
    """A flat [B, Hq * S_max] mask viewed per head and sliced to the S keys."""
    keep = flat.view(B, Q_HEADS, 1, -1)[..., :S]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)


@pytest.mark.parametrize("query_len", [1, 2])
@pytest.mark.parametrize("shape, dtype", [((1, Q_HEADS, 1, S), torch.bool), ((B, Q_HEADS, "Lq", S), torch.bool),
                                          ((B, Q_HEADS, 1, S), torch.float32)])
def test_sdpa_gqa_with_a_mask_per_query_head(query_len, shape, dtype):
    shape = tuple(query_len if size == "Lq" else size for size in shape)
    call = check_rewritten(sdpa_gqa, *gqa_inputs(query_len), per_query_head(shape, dtype)).op_calls()[0]
    assert call.args[GLACOMPILER_LENGTHS] is None and call.args[GLACOMPILER_MASK] is not None


@pytest.mark.parametrize("query_len", [1, 2])
@pytest.mark.parametrize("fn", [repeat_kv_per_head, tiled_kv_per_head])
def test_repeated_kv_with_a_mask_per_query_head(fn, query_len):
    check_rewritten(fn, *gqa_inputs(query_len), per_query_head((B, Q_HEADS, query_len, S), torch.bool))


def test_a_flat_mask_viewed_per_head_and_sliced():
    flat = per_query_head((B, Q_HEADS * (S + 8)), torch.bool)
    flat.view(B, Q_HEADS, S + 8)[..., 0] = True
    check_rewritten(flat_mask_per_head, *gqa_inputs(), flat)


@pytest.mark.gpu
def test_sdpa_gqa_with_a_mask_per_query_head_on_gpu_bf16(cuda_device):
    """Through the whole backend on the GPU: FlashAttention's rule against float32."""
    from test_backend_gpu import check_fa_rule, on_gpu

    args = [*gqa_inputs(2), per_query_head((B, Q_HEADS, 2, S), torch.bool)]
    low = on_gpu(args)
    output, counts, records = compile_and_count(sdpa_gqa, *low)
    assert [(r.status, r.kind) for r in records] == [("rewritten", "gqa")], [str(r) for r in records]
    with torch.no_grad():
        check_fa_rule(output, sdpa_gqa(*low), sdpa_gqa(*on_gpu(args, torch.float32)).float())


@pytest.mark.gpu
def test_t5_position_bias_on_gpu_bf16(cuda_device):
    """Through the whole backend on the GPU: FlashAttention's rule against float32."""
    from test_backend_gpu import check_fa_rule, on_gpu

    args = [*mha_inputs(2), torch.randn(1, H, 2, S, generator=generator(2)) * 4]
    low = on_gpu(args)
    output, counts, records = compile_and_count(t5_position_bias, *low)
    assert [(r.status, r.kind, r.mask) for r in records] == [("rewritten", "mha", "additive")], \
        [str(r) for r in records]
    with torch.no_grad():
        check_fa_rule(output, t5_position_bias(*low), t5_position_bias(*on_gpu(args, torch.float32)).float())


LATENT_HEADS, GROUP, LATENT, ROPE = 2, 4, 32, 16


def gla_masked(q_latent, q_rope, latent, rope_key, keep):
    """GLA with its query heads grouped onto latent heads by a view, and the model's own view of the output."""
    batch = q_latent.shape[0]
    grouped = q_latent.view(batch, 1, LATENT_HEADS, GROUP, LATENT)
    scores = torch.einsum("bljgc,bsjc->bjgls", grouped, latent)
    scores = scores + torch.einsum("blhr,bsr->bhls", q_rope, rope_key).view(batch, LATENT_HEADS, GROUP, 1, S)
    scores = torch.where(keep, scores * 0.125, float("-inf"))
    out = torch.einsum("bjgls,bsjc->bljgc", scores.softmax(-1), latent)
    return out.reshape(batch, 1, LATENT_HEADS * GROUP, LATENT)


@pytest.mark.parametrize("mask_shape", [(1, 1, GROUP, 1, S), (1, LATENT_HEADS, GROUP, 1, S)])
def test_rows_a_mask_tells_apart_keep_the_graphs_views(mask_shape):
    """At batch 1 the rows a mask tells apart become query positions, and the op's output laid back out has other
    strides than the einsum's: the graph's own view of it (the trace's reshape) failed to run (a helper's find).
    The output is now made contiguous where a view of it would fail."""
    g = generator(6)
    args = (torch.randn(1, 1, LATENT_HEADS * GROUP, LATENT, generator=g),
            torch.randn(1, 1, LATENT_HEADS * GROUP, ROPE, generator=g),
            torch.randn(1, S, LATENT_HEADS, LATENT, generator=g), torch.randn(1, S, ROPE, generator=g))
    keep = torch.rand(*mask_shape, generator=g) > 0.4
    keep[..., 0] = True
    check_rewritten(gla_masked, *args, keep)

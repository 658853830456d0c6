"""A mask the pass proves allows a prefix of the keys of a single query row reaches the op as lengths (the count
of allowed keys per sequence: compiler/trace/key_prefix.py); every other mask stays a mask. Either way the
rewritten graph computes what eager computes (fp32)."""
import math

import pytest
import torch
import torch.nn.functional as F

from glacompiler.demo import build_model, model_config
from test_backend_support import assert_close, run_pass

B, HQ, HKV, S, D = 3, 8, 2, 24, 16
aten = torch.ops.aten


def keys(dtype=torch.int64):
    return torch.arange(S, dtype=dtype)


# Masks [B or 1, 1, 1 or Lq, S] (True = attend) built in the graph from the lengths [B] (int64), as models build them.
PREFIXES = {
    "key < length": lambda n: (keys()[None, :] < n[:, None])[:, None, None, :],
    "key <= position": lambda n: (keys()[None, :] <= (n - 1)[:, None])[:, None, None, :],
    "length > key": lambda n: (n[:, None] > keys()[None, :])[:, None, None, :],
    "not (key >= length)": lambda n: ~(keys()[None, :] >= n[:, None])[:, None, None, :],
    "int32 keys cast to float, fractional bound": lambda n: (
        keys(torch.int32).float()[None, :] < (n.float() - 0.5)[:, None])[:, None, None, :],
    "one bound for the batch": lambda n: (keys() < n.max())[None, None, None, :],
    "a bound past the cache": lambda n: (keys()[None, :] < (n + S)[:, None])[:, None, None, :],
    "key arange plus an offset (transformers)": lambda n: ((keys() + 0)[None, :] <= (n - 1)[:, None])[:, None, None, :],
    "key minus the length, below zero": lambda n: ((keys()[None, :] - n[:, None]) < 0)[:, None, None, :],
    "float key times two": lambda n: ((keys().float() * 2)[None, :] < (2 * n.float())[:, None])[:, None, None, :],
    "a bound below zero in one row (SDPA gives an empty row zeros, as the op)": lambda n: (
        keys()[None, :] < (n - 6)[:, None])[:, None, None, :],
    "key indices that rise along each row and also along the batch": lambda n: (
        torch.arange(B * S).view(B, S) < (n + S * torch.arange(B))[:, None])[:, None, None, :],
}
NOT_PREFIXES = {
    "suffix (left padding)": lambda n: (keys()[None, :] >= (S - n)[:, None])[:, None, None, :],
    "window": lambda n: ((keys()[None, :] >= 2) & (keys()[None, :] < n[:, None]))[:, None, None, :],
    "keys reversed (not a view)": lambda n: (keys().flip(0)[None, :] < n[:, None])[:, None, None, :],
    "keys counted down (a suffix)": lambda n: (torch.arange(S - 1, -1, -1)[None, :] < n[:, None])[:, None, None, :],
    "bound varies along the keys": lambda n: (keys()[None, :] < n[:, None] + 5 * (keys()[None, :] % 2))[:, None, None, :],
    "bound minus key (a suffix)": lambda n: ((n[:, None] - keys()[None, :]) < 3)[:, None, None, :],
    "key times a negative number (a suffix)": lambda n: ((keys() * -1)[None, :] < (n - S + 1)[:, None])[:, None, None, :],
    "key plus a term that varies along the keys": lambda n: (
        (keys() + keys() % 3 * 5)[None, :] < n[:, None])[:, None, None, :],
    "key indices read by two runs (not rising)": lambda n: (
        torch.arange(S).view(2, S // 2).t().reshape(S)[None, :] < n[:, None])[:, None, None, :],
    # Values that wrap around or turn to nan: not a prefix, whatever the form says.
    "uint8 keys minus 5 (wrap)": lambda n: ((keys(torch.uint8) - 5)[None, :] < n[:, None])[:, None, None, :],
    "large keys cast to int32 (wrap)": lambda n: (
        torch.arange(0, S * 2**28, 2**28).to(torch.int32)[None, :] < (n * 2**28)[:, None])[:, None, None, :],
    "keys times a factor past float32 (0 * inf = nan)": lambda n: (
        (keys().float() * 1e39)[None, :] <= (n.float() * 1e39)[:, None])[:, None, None, :],
    "keys scaled to inf, shifted by -inf (inf - inf = nan)": lambda n: ~(
        (keys().float() * 1e38 - math.inf) >= -math.inf)[None, None, None, :],
    "keys scaled to inf, shifted by an inf tensor": lambda n: ~(
        ((keys().float() * 1e38)[None, :] - (n.float() * 0 + math.inf)[:, None]) >= -math.inf)[:, None, None, :],
    "inf keys times a factor that rounds to 0 in float32": lambda n: ~(
        ((keys().double() * 1e300).float() * 1e-50)[None, :] >= (0 * n)[:, None])[:, None, None, :],
    "int64 keys shifted past 2**63": lambda n: (
        (keys() + (2**63 - 12))[None, :] < (n + 2**63 - 12)[:, None])[:, None, None, :],
    "int64 keys scaled past 2**63": lambda n: ((keys() * 2**31 * 2**31)[None, :] < n[:, None])[:, None, None, :],
}


def sdpa_masked(make_mask):
    def attention(q, k, v, lengths):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=make_mask(lengths), enable_gqa=True)
    return attention


def inputs(query_len=1):
    torch.manual_seed(0)
    return (torch.randn(B, HQ, query_len, D), torch.randn(B, HKV, S, D), torch.randn(B, HKV, S, D),
            torch.tensor([5, S, 11]))


def op_call_lengths_and_mask(result):
    (call,) = result.op_calls()
    seqlens, mask, kv_range = call.args[5], call.args[7], call.args[11]
    return seqlens, mask, kv_range


@pytest.mark.parametrize("name", [*PREFIXES, *NOT_PREFIXES])
def test_prefix_masks_reach_the_op_as_lengths_and_others_stay_masks(name):
    args = inputs()
    prefix = name in PREFIXES
    fn = sdpa_masked(PREFIXES[name] if prefix else NOT_PREFIXES[name])
    result = run_pass(fn, *args)
    assert result.statuses == ["rewritten"], result.reasons
    seqlens, mask, kv_range = op_call_lengths_and_mask(result)
    assert result.records[0].mask == ("lengths" if prefix else "boolean")
    if prefix:
        assert mask is None and kv_range is None
        value = seqlens.meta["val"]
        assert value.dtype == torch.int32 and list(value.shape) == [B] and value.stride() == (1,)
    else:
        assert seqlens is None and mask is not None and kv_range is not None
    assert_close(result.output, fn(*args))


@pytest.mark.parametrize("dtype, capacity", [(torch.int8, 200), (torch.uint8, 300)])
def test_narrow_key_aranges_that_wrap_stay_masks(dtype, capacity):
    """An int8 or uint8 arange wraps past its range: the row is no prefix (keys 0-4 and from 128 on for int8)."""
    torch.manual_seed(0)
    args = (torch.randn(B, HQ, 1, D), torch.randn(B, HKV, capacity, D), torch.randn(B, HKV, capacity, D),
            torch.tensor([5, capacity, 11]))
    fn = sdpa_masked(lambda n: (torch.arange(capacity, dtype=dtype)[None, :] < n[:, None])[:, None, None, :])
    result = run_pass(fn, *args)
    seqlens, mask, kv_range = op_call_lengths_and_mask(result)
    assert seqlens is None and mask is not None
    assert_close(result.output, fn(*args))


def repeated_heads(k, v) -> tuple:
    """GQA's keys and values with each KV head repeated for its query heads (repeat_interleave, as the attention
    functions here write it)."""
    groups = HQ // HKV
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


def test_two_masks_keep_their_masks():
    """Two masks, each a prefix or not: only a single mask is read as lengths."""
    args = inputs()

    def fn(q, k, v, lengths):
        k, v = repeated_heads(k, v)
        scores = (q @ k.transpose(-1, -2) / math.sqrt(D)).masked_fill((keys() < 2)[None, None, None, :], -math.inf)
        scores = scores.masked_fill((keys()[None, :] >= lengths[:, None])[:, None, None, :], -math.inf)
        return scores.softmax(-1) @ v

    result = run_pass(fn, *args)
    seqlens, mask, kv_range = op_call_lengths_and_mask(result)
    assert seqlens is None and mask is not None
    assert_close(result.output, fn(*args))


def test_several_query_rows_keep_their_mask():
    """Two query rows: each would need its own length (the op's causal lengths match them only when the last
    row's bound lies within the cache, which the graph does not show)."""
    args = inputs(query_len=2)

    def fn(q, k, v, lengths):
        positions = lengths[:, None] - 2 + torch.arange(2)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=(keys()[None, None, :] <= positions[:, :, None])[:, None],
                                              enable_gqa=True)

    result = run_pass(fn, *args)
    seqlens, mask, kv_range = op_call_lengths_and_mask(result)
    assert seqlens is None and mask is not None
    assert_close(result.output, fn(*args))


def hand_written_min_fill(q, k, v, lengths):
    """Hugging Face's eager form: an additive mask of the dtype's min where key > position, over matmuls."""
    k, v = repeated_heads(k, v)
    hidden = torch.where(keys()[None, :] > (lengths - 1)[:, None], torch.finfo(q.dtype).min, 0.0)
    scores = q @ k.transpose(-1, -2) / math.sqrt(D) + hidden[:, None, None, :]
    return scores.softmax(-1) @ v


def min_fill_over_a_held_zero(q, k, v, lengths):
    """transformers 5.17's eager mask: where(allowed, torch.tensor(0.0), min), its zero a constant the graph holds
    (get_attr, lift_fresh_copy), added to the scores."""
    k, v = repeated_heads(k, v)
    allowed = PREFIXES["key <= position"](lengths)
    hidden = torch.where(allowed, torch.tensor(0.0, dtype=q.dtype), torch.finfo(q.dtype).min)
    return (q @ k.transpose(-1, -2) / math.sqrt(D) + hidden).softmax(-1) @ v


def float16_lowest_fill_scaled_down(q, k, v, lengths):
    """(scores + where(allowed, 0, -65504)) * 0.5: the fill reaches the softmax as -32752, a bias, not a mask."""
    k, v = repeated_heads(k, v)
    hidden = torch.where(PREFIXES["key <= position"](lengths), 0.0, -65504.0)
    return ((q @ k.transpose(-1, -2) + hidden) * 0.5).softmax(-1) @ v


def test_float16_lowest_fill_scaled_down_stays_an_additive_mask():
    args = inputs()
    result = run_pass(float16_lowest_fill_scaled_down, *args)
    seqlens, mask, kv_range = op_call_lengths_and_mask(result)
    assert seqlens is None and mask.meta["val"].dtype == torch.float32 and kv_range is not None
    assert_close(result.output, float16_lowest_fill_scaled_down(*args))


@pytest.mark.parametrize("attention", [hand_written_min_fill, min_fill_over_a_held_zero])
def test_additive_min_fill_of_a_prefix_reaches_the_op_as_lengths(attention):
    args = inputs()
    result = run_pass(attention, *args)
    seqlens, mask, kv_range = op_call_lengths_and_mask(result)
    assert seqlens is not None and mask is None and kv_range is None
    assert_close(result.output, attention(*args))


def cudnn_rendering(fill: float):
    """What torch 2.11's SDPA hands cuDNN for a boolean mask (convert_boolean_attn_mask_cudnn: cuDNN takes no
    -inf): where(mask, 0, -65504) as the bias of _scaled_dot_product_cudnn_attention (GQA's heads repeated)."""
    def attention(q, k, v, lengths):
        allowed = PREFIXES["key <= position"](lengths)
        bias = torch.where(allowed, torch.scalar_tensor(0.0), torch.scalar_tensor(fill))
        k, v = repeated_heads(k, v)
        return aten._scaled_dot_product_cudnn_attention(q, k, v, bias, False)[0]
    return attention


@pytest.mark.parametrize("fill", [-65504.0, -65000.0])
def test_cudnn_rendering_of_a_prefix_reaches_the_op_as_lengths(fill):
    """-65504 (float16's lowest, the kernels' MASKED_BIAS) excludes a key: torch's cuDNN bias of a boolean prefix
    mask reaches the op as lengths (transformers' decode masks on CUDA). A fill above it is a bias, kept additive
    (a score gap of 65,000 overcomes it)."""
    args = inputs()
    result = run_pass(cudnn_rendering(fill), *args)
    assert result.statuses == ["rewritten"], result.reasons
    seqlens, mask, kv_range = op_call_lengths_and_mask(result)
    assert result.records[0].mask == ("lengths" if fill == -65504.0 else "additive")
    if fill == -65504.0:
        assert mask is None and kv_range is None and seqlens is not None
    else:
        assert seqlens is None and mask.meta["val"].dtype == torch.float32 and kv_range is not None
    lengths = args[3]
    expected = F.scaled_dot_product_attention(*args[:3], attn_mask=PREFIXES["key <= position"](lengths),
                                              enable_gqa=True)
    assert_close(result.output, expected)


def test_layers_share_the_count_only_when_their_masks_agree():
    """Layers that each rebuild the same prefix mask share one count of allowed keys; different masks do not."""
    def layers(q, k, v, lengths):
        out = q
        for shrink in (0, 0, 2):
            mask = (keys()[None, :] < (lengths - shrink)[:, None])[:, None, None, :]
            out = F.scaled_dot_product_attention(out, k, v, attn_mask=mask, enable_gqa=True)
        return out

    args = inputs()
    result = run_pass(layers, *args)
    calls = result.op_calls()
    assert len(calls) == 3 and all(call.args[7] is None for call in calls)
    assert calls[0].args[5] is calls[1].args[5] and calls[2].args[5] is not calls[0].args[5]
    assert_close(result.output, layers(*args))


@pytest.mark.parametrize("variant", ["gqa-4", "gta-4", "gla-2"])
def test_plain_decode_masks_become_lengths(variant):
    """The demo's plain-PyTorch decode (visible_keys under masked_fill or where) of each kind: lengths, no mask."""
    device = torch.device("cpu")
    model = build_model(model_config(variant, 1, device), device, torch.float32, B, S)
    for cache in model.caches:
        for tensor in cache.tensors():
            tensor.normal_()
    tokens = torch.randint(0, model.config.vocab_size, (B, 1))
    lengths = torch.tensor([4, S, 13], dtype=torch.int32)
    with torch.no_grad():
        expected = model.decode(tokens, lengths)
        result = run_pass(model.decode, tokens, lengths)
    seqlens, mask, kv_range = op_call_lengths_and_mask(result)
    assert seqlens is not None and mask is None and kv_range is None
    assert_close(result.output, expected, tol=1e-4)

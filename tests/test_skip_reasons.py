"""Issue 12 section 5: a skip reason says what the pass saw, where (the record's source line is the user's
line; a node elsewhere adds its own: "(at file:line in function)"), and what would let the site fuse
("; to fuse: ..."). Each check of the pass that a user's code can reach is triggered here by a small
hand-written function (fp32, CPU, through the pass harness); tests/test_decline_fixes.py guards that every
Decline has a fix. Reasons checked elsewhere: the style corpus's negatives (test_style_corpus.py), the
expanded-MLA "not absorbed" notes (test_absorb.py), scale tensors (test_backend_scale_tensors.py), the training
row (test_backend_negative.py), the rewrite=False row (test_backend_runtime.py).

The table (CASES) by check, module of the pass -> cases:
  find/sdpa.py         read_sdpa: side outputs; a fused dropout (CUDA)   logsumexp_used, test_sdpa_dropout_on_cuda
  plan/match.py        scores used elsewhere; SDPA heads                 scores_returned, scaled_scores_returned,
                                                                         test_symbolic_sizes
                       SDPA's key and value lengths                      key_value_lengths_differ
                       two score terms, neither tied                     two_terms_per_head
  plan/site_plan.py    query length (prefill, symbolic), dtype           prefill, float64, test_symbolic_sizes
                       symbolic heads, head dims and their strides       test_symbolic_sizes
                       two score terms, keys per head in each            terms_with_own_heads
                       a mask read with a stride                         mask_built_elsewhere
                       number of score terms, their scales               three_products, scaled_differently
                       cache layout, op's own checks                     key_not_contiguous, every_other_key,
                                                                         head_dim_unsupported
                       a rope query shared by all heads                  rope_query_broadcast
                       query positions, batch dims under a mask          positions_in_two_dims,
                                                                         latent_with_two_batch_dims
  plan/extensions.py   soft cap on a latent, ALiBi with several tokens   softcap_on_latent, alibi_two_tokens,
                       or with sinks                                     alibi_with_sinks
                       sinks and ALiBi slopes per head, ALiBi positions  sinks_per_sequence, sinks_permuted,
                                                                         alibi_slopes_in_pairs,
                                                                         alibi_positions_restart,
                                                                         alibi_positions_per_sequence,
                                                                         sinks_heads_regrouped
  trace/score_side.py  every node between q @ k and the softmax          negative_scale, constant_added,
                                                                         add_with_alpha, integer_scores,
                                                                         sliced_scores, where_other_tensor,
                                                                         integer_mask, fill_zero, alibi_twice,
                                                                         fill_over_exp, fill_over_sum,
                                                                         bias_on_regrouped_scores
  trace/masks.py       where a mask varies, how it is viewed             bias_per_key_block, bias_heads_regrouped,
                                                                         mask_on_permuted_scores
  trace/score_mods.py  soft cap, sinks                                   two_tanh, mask_under_tanh,
                                                                         three_sink_columns, sink_column_first,
                                                                         sink_column_kept, sinks_scores_used,
                                                                         integer_sinks
  trace/operands.py    operand scales                                    infinite_scale
  trace/slots.py       the q.k product and the softmax dim               key_dim_broadcast, part_of_a_cat,
                                                                         key_positions_interleaved,
                                                                         scores_keys_permuted, scores_expanded,
                                                                         query_not_batched, sdpa_without_batch,
                                                                         query_dim_in_two_runs,
                                                                         key_half_broadcast, softmax_over_heads,
                                                                         rope_key_broadcast,
                                                                         qk_rows_regrouped, scores_regrouped,
                                                                         terms_keys_reordered
                       a key concatenated along its head dim             cat_query_strided, cat_part_reordered
  trace/value_side.py  probabilities to the value product                probs_returned, dropout,
                                                                         integer_probabilities, v_per_query,
                                                                         value_dim_in_two_runs, v_batch_broadcast,
                                                                         heads_summed, probs_regrouped,
                                                                         v_rows_regrouped, probs_viewed_regrouped,
                                                                         probs_rows_regrouped, head_zero_only
  absorb/              (notes on fused expanded sites)                   test_absorb.py
Reasons no user code reaches (internal invariants) carry UNEXPECTED_GRAPH as their fix and are not triggered.
tests/test_decline_fixes.py lists every user-facing check by module, function and reason, with the test that
triggers it or "unreachable" (argued here), so a new check fails it until it is covered.
Checks with a user-facing fix that no code running correctly in eager reaches (so not triggered):
  trace/value_side.py  probabilities as the right operand of the value product: the finder takes a softmax only
                       when its output reaches a product's left operand through single-user views and casts,
                       and follow_probabilities walks that same chain, so it ends at that product's left side
  find/sdpa.py         a fused SDPA op with dropout: on CPU SDPA with dropout decomposes to its math form (the
                       "dropout" case) and the CPU flash op rejects dropout; CUDA's fused ops keep it
                       (test_sdpa_dropout_on_cuda)
                       a scale that is not a number: dynamo specializes SDPA's scale (tried: a scale computed
                       from a dynamic size, and a float argument with specialize_float off)
  plan/match.py        an SDPA mask that does not broadcast to the scores: eager SDPA adds the mask to the
                       scores, so it raises first
                       SDPA operands without a head dim: the fused ops take 4-D tensors only (3-D SDPA
                       decomposes to its math form)
                       query heads not a multiple of the KV heads: SDPA rejects them (enable_gqa, or heads that
                       broadcast); only the private CPU flash op takes them, and reads past the KV heads
  plan/site_plan.py    a mask that varies along a group (query rows of one KV head): choose_roles makes every row
                       slot a mask varies along a query position (two such: "query positions are spread over
                       several dims")
                       a cache read in runs that do not tile its axis: views keep every run inside its axis, so
                       their span never exceeds it (only sizes the pass cannot compare, symbolic, could)
                       an output that does not hold every entry once: analyze_values makes each of its batch
                       and row runs a whole score dim read once, and V's value dim one run
  trace/score_side.py  no q.k product feeds the softmax: the finder takes a softmax only when its input reaches
                       a product, and the walk recurses until it reaches one or declines on the way
                       a non-boolean mask for where/masked_fill: eager masked_fill rejects it; eager where takes
                       a uint8 condition, but dynamo's fake-tensor trace rejects it before the pass runs
                       a mask that does not broadcast to the node it is applied at: that node is the broadcast
                       op's own output, and its whole axes resolve through any views of fixed sizes
                       a scale tensor that does not broadcast to the scores: the same check (the multiply's output
                       is the node, and the scale broadcasts into it)
                       a scale tensor over one score term only: _visit_add reads a side that reaches a product
                       only through a scale tensor, beside one that reaches it without, as a bias (a mask)
  trace/score_mods.py  a sink column that does not broadcast to the scores: torch.cat needs every other dim equal
                       and the column is one wide along the cat dim, so it always broadcasts
                       a sink column view that cannot be followed: the column is read whole along each of its
                       axes, which resolves through any views of fixed sizes
  absorb/expansion.py  a key part copied from a tensor that does not broadcast (eager copy_ rejects it); a key
                       part never written (new_empty: the eager output reads uninitialized memory)
"""
import inspect
import math
from typing import Callable, NamedTuple, Optional

import pytest
import torch
import torch.nn.functional as F

import glacompiler
from glacompiler.compiler import graph_pass
from test_backend_patterns import B, D, GROUP, HKV, HQ, LATENT, ROPE, S, randn, repeat_kv
from test_backend_support import PassHarness, assert_close, run_pass


def inputs(query_len=1, dtype=torch.float32):
    return randn(B, HQ, query_len, D, dtype=dtype), randn(B, HKV, S, D, dtype=dtype), randn(B, HKV, S, D, dtype=dtype)


def latent_inputs():
    """MLA decode, absorbed form: q_latent [B, 1, H, C], q_rope [B, 1, H, R], latent [B, S, C], rope [B, S, R]."""
    return randn(B, 1, HQ, LATENT), randn(B, 1, HQ, ROPE), randn(B, S, LATENT), randn(B, S, ROPE)


def valid_keys():
    valid = torch.rand(B, S) < 0.8
    valid[:, 0] = True
    return valid


def keys_t(k):
    return repeat_kv(k, GROUP).transpose(-1, -2)


def values(v):
    return repeat_kv(v, GROUP)


def sink_column(sinks, query_len=1):
    return sinks.reshape(1, -1, 1, 1).expand(B, -1, query_len, -1)


# ---- find/sdpa.py, plan/match.py ------------------------------------------------------------------------------

def logsumexp_used(q, k, v):
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, values(k), values(v))
    return out, lse


def scores_returned(q, k, v):
    scores = q @ keys_t(k) / math.sqrt(D)
    return scores.softmax(-1) @ values(v), scores


def scaled_scores_returned(q, k, v, bias):
    scaled = q @ keys_t(k) * 0.25
    return (scaled + bias).softmax(-1) @ values(v), scaled


def two_terms_per_head(q, k, v, q2, k2):
    scores = q @ keys_t(k) + q2 @ keys_t(k2)  # two per-head keys: no rope key shared by all heads
    return scores.softmax(-1) @ values(v)


def key_value_lengths_differ(q, k, v_store):
    # eager's CPU SDPA does not check that K and V are of one length (it reads past V's end, here into
    # v_store's last rows); the pass declines instead of guessing
    return F.scaled_dot_product_attention(q, k, v_store[:, :, :S - 4])


# ---- plan/site_plan.py ----------------------------------------------------------------------------------------

def prefill(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)


def build_mask(valid_twice):
    return (~valid_twice).view(B, S, 2)[..., 0]  # [B, S]: every other entry of [B, 2S], read with a stride


def mask_built_elsewhere(q, k, v, valid_twice):
    scores = (q @ keys_t(k)) * D ** -0.5
    scores = scores.masked_fill(build_mask(valid_twice)[:, None, None, :], float("-inf"))
    return scores.softmax(-1) @ values(v)


def three_products(q, k, v):
    scores = q @ keys_t(k) + q @ keys_t(k) * 0.5 + q @ keys_t(v)
    return scores.softmax(-1) @ values(v)


def scaled_differently(q_latent, q_rope, latent, rope_key):
    scores = (torch.einsum("blhc,bsc->bhls", q_latent, latent) * 0.1
              + torch.einsum("blhr,bsr->bhls", q_rope, rope_key) * 0.2)
    return torch.einsum("bhls,bsc->blhc", scores.softmax(-1), latent)


def rope_query_broadcast(q_latent, q_rope, latent, rope_key):
    q_rope = q_rope[:, :, :1].expand(B, 1, HQ, ROPE)  # head 0's rope query for every head
    scores = torch.einsum("blhc,bsc->bhls", q_latent, latent) + torch.einsum("blhr,bsr->bhls", q_rope, rope_key)
    return torch.einsum("bhls,bsc->blhc", (scores * 0.1).softmax(-1), latent)


def terms_with_own_heads(q, k, q2, k2, v):
    # scores [B, 2, 4, 1, S]: the first term's key varies along dim 1 only, the second's along dim 2 only
    scores = q @ k.transpose(-1, -2) + q2 @ k2.transpose(-1, -2)
    return scores.softmax(-1) @ v


def positions_in_two_dims(q, k, v, valid):
    scores = q @ keys_t(k)[:, :, None]  # q [B, HQ, 2, 2, D]: four query tokens as 2 x 2
    return scores.masked_fill(~valid, -math.inf).softmax(-1) @ values(v)[:, :, None]


def latent_with_two_batch_dims(q_latent, q_rope, latent, rope_key, valid):
    scores = (torch.einsum("xblhc,xbsc->xbhls", q_latent, latent)
              + torch.einsum("xblhr,xbsr->xbhls", q_rope, rope_key)) * 0.1
    scores = scores.masked_fill(~valid, -math.inf)  # valid [2, B, 1, 1, S]: per sequence of a 2 x B batch
    return torch.einsum("xbhls,xbsc->xblhc", scores.softmax(-1), latent)


def valid_for(*shape):
    valid = torch.rand(*shape) < 0.8
    valid[..., 0] = True
    return valid


def key_not_contiguous(q, key_store, v):
    k = key_store.transpose(-1, -2)  # the cache is stored [B, Hkv, D, S]
    return (q @ keys_t(k)).softmax(-1) @ values(v)


def every_other_key(q, k_store, v):
    k = k_store.reshape(B, HKV, S, 2, D)[:, :, :, 0]  # the keys at the even positions of a [B, Hkv, 2S, D] cache
    return (q @ keys_t(k)).softmax(-1) @ values(v)


def hand_written(q, k, v):
    return (q @ k.transpose(-1, -2) * 0.25).softmax(-1) @ v


# ---- plan/extensions.py ---------------------------------------------------------------------------------------

def softcap_on_latent(q_latent, q_rope, latent, rope_key):
    scores = torch.einsum("blhc,bsc->bhls", q_latent, latent) + torch.einsum("blhr,bsr->bhls", q_rope, rope_key)
    scores = 3 * torch.tanh(scores * 0.1 / 3)
    return torch.einsum("bhls,bsc->blhc", scores.softmax(-1), latent)


def alibi_slopes():
    return torch.linspace(0.1, 0.8, HQ)[None, :, None, None]


def alibi_two_tokens(q, k, v):
    scores = q @ keys_t(k) * 0.25 + alibi_slopes() * torch.arange(S, dtype=torch.float32)
    causal = torch.ones(2, S, dtype=torch.bool).tril(S - 2)
    return scores.masked_fill(~causal, -math.inf).softmax(-1) @ values(v)


def alibi_slopes_in_pairs(q, k, v):
    slopes = torch.linspace(0.1, 0.8, HQ // 2)[:, None].expand(HQ // 2, 2).reshape(1, HQ, 1, 1)  # heads 2i, 2i+1
    scores = q @ keys_t(k) * 0.25 + slopes * torch.arange(S, dtype=torch.float32)
    return scores.softmax(-1) @ values(v)


def alibi_positions_restart(q, k, v):
    positions = torch.arange(S // 2, dtype=torch.float32)[None].expand(2, S // 2).reshape(S)  # 0..S/2-1 twice
    scores = q @ keys_t(k) * 0.25 + alibi_slopes() * positions
    return scores.softmax(-1) @ values(v)


def alibi_positions_per_sequence(q, k, v):
    positions = torch.arange(B * S, dtype=torch.float32).reshape(B, 1, 1, S)  # one counter over the whole batch
    scores = q @ keys_t(k) * 0.25 + alibi_slopes() * positions
    return scores.softmax(-1) @ values(v)


def sinks_heads_regrouped(q, k, v, sinks):
    scores = q @ repeat_kv(k, 4).transpose(-1, -2) * 0.25  # 12 query heads as 3 KV heads x 4
    column = sinks.reshape(3, 4).t().reshape(1, 12, 1, 1).expand(B, 12, 1, 1)  # sinks indexed as 4 x 3
    probs = torch.cat([scores, column], dim=-1).softmax(-1)
    return probs[..., :-1] @ repeat_kv(v, 4)


def twelve_heads():
    return randn(B, 12, 1, D), randn(B, 3, S, D), randn(B, 3, S, D)


def sinks_per_sequence(q, k, v, sinks):
    scores = q @ keys_t(k) * 0.25
    probs = torch.cat([scores, sinks.reshape(B, HQ, 1, 1)], dim=-1).softmax(-1)  # sinks [B, HQ]
    return probs[..., :-1] @ values(v)


def alibi_with_sinks(q, k, v, sinks):
    scores = q @ keys_t(k) * 0.25 + alibi_slopes() * torch.arange(S, dtype=torch.float32)
    probs = torch.cat([scores, sinks.reshape(1, HQ, 1, 1).expand(B, HQ, 1, 1)], dim=-1).softmax(-1)
    return probs[..., :-1] @ values(v)


def sinks_permuted(q, k, v, sinks):
    scores = q @ keys_t(k) * 0.25
    column = sinks.reshape(2, HQ // 2).t().reshape(1, HQ, 1, 1).expand(B, HQ, 1, 1)  # head h takes a strided sink
    probs = torch.cat([scores, column], dim=-1).softmax(-1)
    return probs[..., :-1] @ values(v)


# ---- trace/score_side.py --------------------------------------------------------------------------------------

def negative_scale(q, k, v):
    return (q @ keys_t(k) * -0.25).softmax(-1) @ values(v)


def constant_added(q, k, v):
    return (q @ keys_t(k) * 0.25 + 1.0).softmax(-1) @ values(v)


def add_with_alpha(q, k, v, bias):
    return torch.add(q @ keys_t(k), bias, alpha=2.0).softmax(-1) @ values(v)


def integer_scores(q, k, v):
    scores = (q.to(torch.int32) @ keys_t(k).to(torch.int32)).float()
    return scores.softmax(-1) @ values(v)


def sliced_scores(q, k, v):
    return (q @ keys_t(k))[..., 4:].softmax(-1) @ values(v)[:, :, 4:]  # (a prefix of the keys fuses)


def bias_on_regrouped_scores(q, k, v, bias):  # q, k, v [3, 4, ...]; the bias added over a 4 x 3 view
    scores = ((q @ k.transpose(-1, -2)).reshape(4, 3, 1, S) + bias).reshape(3, 4, 1, S)
    return scores.softmax(-1) @ v


def where_other_tensor(q, k, v, valid, other):
    scores = torch.where(valid[:, None, None, :], q @ keys_t(k), other)
    return scores.softmax(-1) @ values(v)


def integer_mask(q, k, v, bias):
    return (q @ keys_t(k) + bias).softmax(-1) @ values(v)


def bias_per_key_block(q, k, v, bias):
    block_bias = bias.reshape(B, 1, 2, 1).expand(B, 1, 2, S // 2).reshape(B, 1, 1, S)  # one value per half of the keys
    return (q @ keys_t(k) + block_bias).softmax(-1) @ values(v)


def mask_on_permuted_scores(q, k, v, bias_store):
    scores = (q @ keys_t(k)).reshape(B, HQ, 1, 8, 3).transpose(-1, -2).reshape(B, HQ, 1, S)  # keys reordered
    scores = scores + bias_store.reshape(B, 1, 1, S)  # bias_store [B, 4, 6]: its rows cut the reordered keys
    scores = scores.reshape(B, HQ, 1, 3, 8).transpose(-1, -2).reshape(B, HQ, 1, S)  # back to the key order
    return scores.softmax(-1) @ values(v)


def bias_heads_regrouped(q, k, v, bias):
    per_head = bias.reshape(B, 3, 4).transpose(1, 2).reshape(B, 12, 1, 1)  # heads indexed as 4 x 3, not 3 x 4
    return (q @ repeat_kv(k, 4).transpose(-1, -2) + per_head).softmax(-1) @ repeat_kv(v, 4)


def fill_zero(q, k, v, valid):
    return (q @ keys_t(k)).masked_fill(~valid[:, None, None, :], 0.0).softmax(-1) @ values(v)


def alibi_twice(q, k, v):
    scores = q @ keys_t(k) * 0.25
    positions = torch.arange(S, dtype=torch.float32)
    scores = scores + alibi_slopes() * positions
    scores = scores + alibi_slopes() * positions
    return scores.softmax(-1) @ values(v)


def fill_over_exp(q, k, v, bias):
    # masked_fill's mask comes from q @ k, so the softmax input reaches a product, but its scores do not
    return bias.exp().masked_fill((q @ keys_t(k) * 0).bool(), -math.inf).softmax(-1) @ values(v)


def fill_over_sum(q, k, v, bias, other):
    return (bias + other).masked_fill((q @ keys_t(k) * 0).bool(), -math.inf).softmax(-1) @ values(v)


# ---- trace/score_mods.py --------------------------------------------------------------------------------------

def two_tanh(q, k, v):
    scores = q @ keys_t(k) * 0.25
    return (3 * torch.tanh(torch.tanh(scores / 3))).softmax(-1) @ values(v)


def mask_under_tanh(q, k, v, bias):
    scores = q @ keys_t(k) * 0.25 + bias
    return (3 * torch.tanh(scores / 3)).softmax(-1) @ values(v)


def three_sink_columns(q, k, v, sinks):
    scores = q @ keys_t(k) * 0.25
    probs = torch.cat([scores, sink_column(sinks), sink_column(sinks)], dim=-1).softmax(-1)
    return probs[..., :S] @ values(v)


def sink_column_first(q, k, v, sinks):
    scores = q @ keys_t(k) * 0.25
    probs = torch.cat([sink_column(sinks), scores], dim=-1).softmax(-1)
    return probs[..., 1:] @ values(v)


def sink_column_kept(q, k, v, sinks):
    scores = q @ keys_t(k) * 0.25
    probs = torch.cat([scores, sink_column(sinks)], dim=-1).softmax(-1)
    return probs[..., 1:] @ values(v)  # drops the first key instead of the sink


def sinks_scores_used(q, k, v, sinks):
    scores = q @ keys_t(k) * 0.25
    probs = torch.cat([scores, sink_column(sinks)], dim=-1).softmax(-1)
    return probs[..., :-1] @ values(v), scores.amax(-1)


def integer_sinks(q, k, v, sinks):
    scores = q @ keys_t(k) * 0.25
    probs = torch.cat([scores, sink_column(sinks).to(torch.int32)], dim=-1).softmax(-1)
    return probs[..., :-1] @ values(v)


# ---- trace/operands.py, trace/slots.py ------------------------------------------------------------------------

def infinite_scale(q, k, v):
    return ((q * float("inf")) @ keys_t(k)).softmax(-1) @ values(v)


def key_dim_broadcast(q, k, v, key_column):
    keys = key_column.expand(B, HQ, S, D)  # one number per key, broadcast over the head dim
    return (q @ keys.transpose(-1, -2)).softmax(-1) @ values(v)


def part_of_a_cat(q, k, k2, v):
    keys = torch.cat([values(k), values(k2)], -1)[..., :D]
    return (q @ keys.transpose(-1, -2)).softmax(-1) @ values(v)


def key_positions_interleaved(q, key_store, v):
    keys = key_store.permute(0, 2, 3, 1, 4).reshape(B, HKV, S, D)  # [B, 2, Hkv, S/2, D]: key j at (j % 2, j // 2)
    return (q @ keys_t(keys)).softmax(-1) @ values(v)


def scores_keys_permuted(q, k, v):
    scores = (q @ keys_t(k)).reshape(B, HQ, 2, S // 2).transpose(-1, -2).reshape(B, HQ, 1, S)  # key order permuted
    return scores.softmax(-1) @ values(v)


def scores_expanded(q, k, v):
    scores = (q @ keys_t(k)).expand(B, HQ, 3, S)
    return scores.softmax(-1) @ values(v)


def query_not_batched(q, k, v):
    return (q.expand(B, HQ, 1, D) @ keys_t(k)).softmax(-1) @ values(v)  # q [1, HQ, 1, D]


def query_dim_in_two_runs(q_pairs, k, v):
    q = q_pairs.transpose(-1, -2).reshape(B, HQ, 1, D)  # [B, HQ, 1, D/2, 2]: the head dim interleaved
    return (q @ keys_t(k)).softmax(-1) @ values(v)


def key_half_broadcast(q, k_half, v):
    keys = k_half[..., None].expand(B, HQ, S, D // 2, 2).reshape(B, HQ, S, D)  # each key element twice
    return (q @ keys.transpose(-1, -2)).softmax(-1) @ values(v)


def softmax_over_heads(q, k, v):
    return (q @ keys_t(k) * 0.25).softmax(1) @ values(v)


def rope_key_broadcast(q_latent, q_rope, latent, rope_key):
    rope_key = rope_key[:, :1].expand(B, S, ROPE)  # one rope key for every position
    scores = torch.einsum("blhc,bsc->bhls", q_latent, latent) + torch.einsum("blhr,bsr->bhls", q_rope, rope_key)
    return torch.einsum("bhls,bsc->blhc", (scores * 0.1).softmax(-1), latent)


def qk_rows_regrouped(q, k_store, v):  # q [3, 4, 1, D], k_store [4, 3, S, D]: 12 rows grouped differently
    scores = q.reshape(12, 1, D) @ k_store.reshape(12, S, D).transpose(-1, -2)
    return scores.softmax(-1) @ v


def scores_regrouped(q, k, v):  # q, k [3, 4, ...]; the scores viewed as 4 x 3
    scores = (q.reshape(12, 1, D) @ k.reshape(12, S, D).transpose(-1, -2)).reshape(4, 3, 1, S)
    return scores.softmax(-1) @ v


def cat_query_strided(q_pairs, k, k_rope, v):
    q = q_pairs.view(B, HQ, 1, D + D // 2, 2)[..., 0]  # every other element of q_pairs [B, HQ, 1, 3D]
    keys = torch.cat([values(k), values(k_rope)], -1)
    return (q @ keys.transpose(-1, -2)).softmax(-1) @ values(v)


def cat_part_reordered(q, k_blocks, k_rope, v):
    k = k_blocks.reshape(B, HKV, S, D)  # k_blocks [B, Hkv, 4, 6, D]
    keys = torch.cat([k, k_rope], -1).reshape(B, HKV, 3, 8, D + D // 2).transpose(2, 3)  # keys reordered
    return (q @ keys_t(keys.reshape(B, HKV, S, D + D // 2))).softmax(-1) @ values(v)


def terms_keys_reordered(q_latent, q_rope, latent, rope_key):
    latent_scores = torch.einsum("blhc,bsc->bhls", q_latent, latent)
    rope_scores = torch.einsum("blhr,bsr->bhls", q_rope, rope_key)
    # each term's keys reordered differently (as 4 x 6 and as 3 x 8)
    latent_scores = latent_scores.reshape(B, HQ, 1, 4, 6).transpose(-1, -2).reshape(B, HQ, 1, S)
    rope_scores = rope_scores.reshape(B, HQ, 1, 3, 8).transpose(-1, -2).reshape(B, HQ, 1, S)
    return torch.einsum("bhls,bsc->blhc", ((latent_scores + rope_scores) * 0.1).softmax(-1), latent)


def sdpa_mha(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


# ---- trace/value_side.py --------------------------------------------------------------------------------------

def probs_returned(q, k, v):
    probs = (q @ keys_t(k) * 0.25).softmax(-1)
    return probs @ values(v), probs


def integer_probabilities(q, k, v):
    probs = (q @ keys_t(k) * 0.25).softmax(-1)
    return probs.to(torch.int64) @ values(v).to(torch.int64)


def sdpa_dropout(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.3, enable_gqa=True)


def sdpa_dropout_mha(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, dropout_p=0.3)


def v_per_query(q, k, v, v_rows):
    probs = (q @ keys_t(k) * 0.25).softmax(-1)
    return probs[:, :, :, None, :] @ v_rows  # V [B, HQ, Lq, S, D]: different values per query row


def value_dim_in_two_runs(q, k, v_pairs):
    v = v_pairs.transpose(-1, -2).reshape(B, HKV, S, D)  # [B, Hkv, S, D/2, 2]: the value dim interleaved
    return (q @ keys_t(k)).softmax(-1) @ values(v)


def v_batch_broadcast(q, k, v, v_one):
    probs = (q @ keys_t(k) * 0.25).softmax(-1)
    return probs @ v_one.expand(B, HQ, S, D)  # V [1, HQ, S, D]


def heads_summed(q, k, v):
    probs = (q @ keys_t(k) * 0.25).softmax(-1)  # [B, HQ, 1, S]
    return probs.transpose(1, 2).reshape(B, 1, HQ * S) @ values(v).reshape(B, HQ * S, D)  # sums heads and keys


def probs_regrouped(q, k, v):
    probs = (q @ keys_t(k) * 0.25).softmax(-1)
    return probs.permute(0, 3, 2, 1).reshape(B, HQ, 1, S) @ values(v)  # mixes heads and key positions


def v_rows_regrouped(q, k, v_store):  # q, k [3, 4, ...], v_store [4, 3, S, D]
    probs = (q @ k.transpose(-1, -2)).softmax(-1).reshape(12, 1, S)
    return probs @ v_store.reshape(12, S, D)


def probs_viewed_regrouped(q, k, v):  # q, k [3, 4, ...]; the probabilities viewed as 4 x 3
    probs = (q @ k.transpose(-1, -2)).softmax(-1)
    return probs.reshape(4, 3, 1, S) @ v


def head_zero_only(q, k, v):
    probs = (q @ keys_t(k) * 0.25).softmax(-1)
    return probs[:, 0] @ values(v)[:, 0]


def probs_rows_regrouped(q, k, v_halves):  # q [B, 12, 1, D], k [B, 3, S, D]: 12 heads as 3 KV heads x 4
    probs = (q @ repeat_kv(k, 4).transpose(-1, -2)).softmax(-1)
    return probs.view(B, 2, 6, S) @ v_halves  # the heads as 2 x 6 rows, each 6 sharing one V


class Case(NamedTuple):
    fn: Callable
    make_inputs: Callable
    seen: str  # what the reason says the pass saw
    fix: str  # what it says would let the site fuse
    node_line: Optional[str] = None  # code on the line of the node the pass stopped at, when not the site's
    same_output: bool = True  # the output equals eager's (not so for random dropout or non-finite scores)


CASES = {
    "logsumexp_used": Case(logsumexp_used, inputs, "logsumexp", "use only the attention output"),
    "scores_returned": Case(scores_returned, inputs, "the scores are also used by", "only for the softmax"),
    "two_terms_per_head": Case(two_terms_per_head, lambda: (*inputs(), randn(B, HQ, 1, D), randn(B, HKV, S, D)),
                               "cannot tell the latent score term from the rope term", "different head dims"),
    "prefill": Case(prefill, lambda: inputs(query_len=20), "query length 20 > 16 (prefill)", "decode steps"),
    "float64": Case(sdpa, lambda: inputs(dtype=torch.float64), "not one supported dtype",
                    "float16, bfloat16, float32"),
    "mask_built_elsewhere": Case(mask_built_elsewhere, lambda: (*inputs(), torch.rand(B, 2 * S) < 0.8),
                                 "is read with a stride along one of its dims", "read whole or as a prefix",
                                 node_line="return (~valid_twice).view(B, S, 2)[..., 0]"),
    "three_products": Case(three_products, inputs, "3 q.k products feed the scores", "one q @ k product"),
    "scaled_differently": Case(scaled_differently, latent_inputs, "the score terms are scaled differently",
                               "one softmax scale"),
    "key_not_contiguous": Case(key_not_contiguous, lambda: (inputs()[0], randn(B, HKV, D, S), inputs()[2]),
                               "head dim is not contiguous in memory", "head dim last and contiguous"),
    "head_dim_unsupported": Case(sdpa_mha, lambda: (randn(B, HQ, 1, 12), randn(B, HQ, S, 12), randn(B, HQ, S, 12)),
                                 "unsupported by the op: q has head dim 12", "head dims and query lengths"),
    "softcap_on_latent": Case(softcap_on_latent, latent_inputs, "soft capping or ALiBi on a latent",
                              "latent kernels take neither"),
    "alibi_two_tokens": Case(alibi_two_tokens, lambda: inputs(query_len=2), "ALiBi with several query tokens",
                             "query length 1"),
    "alibi_with_sinks": Case(alibi_with_sinks, lambda: (*inputs(), randn(HQ)), "ALiBi with sinks",
                             "no model combines them"),
    "sinks_per_sequence": Case(sinks_per_sequence, lambda: (*inputs(), randn(B, HQ)),
                               "the sinks vary along the batch dim", "depend on the query head only"),
    "negative_scale": Case(negative_scale, inputs, "scores are multiplied by -0.25", "a positive softmax scale",
                           node_line="return (q @ keys_t(k) * -0.25)"),
    "constant_added": Case(constant_added, inputs, "a constant is added to the scores", "drop the constant"),
    "add_with_alpha": Case(add_with_alpha, lambda: (*inputs(), randn(B, 1, 1, S)), "add with alpha != 1",
                           "alpha=1"),
    "integer_scores": Case(integer_scores, inputs, "scores are cast from torch.int32 to torch.float32",
                           "keep the scores floating point", node_line="scores = (q.to(torch.int32)"),
    "sliced_scores": Case(sliced_scores, inputs, "that does not keep every element", "no slicing of the scores"),
    "where_other_tensor": Case(where_other_tensor, lambda: (*inputs(), valid_keys(), randn(B, HQ, 1, S)),
                               "does not select between scores and a constant fill", "masked_fill(mask, -inf)",
                               node_line="scores = torch.where("),
    "integer_mask": Case(integer_mask, lambda: (*inputs(), torch.randint(0, 3, (B, 1, 1, S))),
                         "is not a floating tensor", "a float additive mask"),
    "fill_zero": Case(fill_zero, lambda: (*inputs(), valid_keys()), "replaced by 0.0, which still takes part",
                      "-inf or torch.finfo(dtype).min"),
    "alibi_twice": Case(alibi_twice, inputs, "an ALiBi bias is added under a soft cap, or twice",
                        "add the ALiBi bias once", node_line="scores = scores + alibi_slopes() * positions\n"),
    "two_tanh": Case(two_tanh, inputs, "the scores pass through two tanh", "the op soft-caps once"),
    "mask_under_tanh": Case(mask_under_tanh, lambda: (*inputs(), randn(B, 1, 1, S)), "under the soft cap's tanh",
                            "apply the mask after the soft cap"),
    "three_sink_columns": Case(three_sink_columns, lambda: (*inputs(), randn(HQ)),
                               "something other than one sink column after them", "one column after the scores"),
    "sink_column_first": Case(sink_column_first, lambda: (*inputs(), randn(HQ)), "wider than one sink per row",
                              "one sink logit per row", node_line="probs = torch.cat([sink_column(sinks), scores]"),
    "sink_column_kept": Case(sink_column_kept, lambda: (*inputs(), randn(HQ)),
                             "probability is not dropped right after the softmax", "probs[..., :-1]"),
    "sinks_scores_used": Case(sinks_scores_used, lambda: (*inputs(), randn(HQ)),
                              "the scores joined to the sinks are also used elsewhere", "only for the softmax",
                              node_line="scores = q @ keys_t(k) * 0.25"),
    "integer_sinks": Case(integer_sinks, lambda: (*inputs(), randn(HQ)), "the sink column is not a floating tensor",
                          "sinks as a float tensor"),
    "infinite_scale": Case(infinite_scale, inputs, "scaled by a non-finite factor", "a finite factor",
                           same_output=False),
    "key_dim_broadcast": Case(key_dim_broadcast, lambda: (*inputs(), randn(B, HQ, S, 1)),
                              "the key's head dim is not one run of one axis", "one dim of its tensor"),
    "part_of_a_cat": Case(part_of_a_cat, lambda: (*inputs()[:2], randn(B, HKV, S, D), inputs()[2]),
                          "reads part of a concatenated key", "the whole concatenated key"),
    "key_positions_interleaved": Case(key_positions_interleaved,
                                      lambda: (inputs()[0], randn(B, 2, HKV, S // 2, D), inputs()[2]),
                                      "key positions are split over several runs", "in one dim of the scores"),
    "scores_expanded": Case(scores_expanded, inputs, "the scores are broadcast along dim 2", "no expand of q @ k"),
    "query_not_batched": Case(query_not_batched, lambda: (randn(1, HQ, 1, D), *inputs()[1:]),
                              "does not cover all keys", "a real dim wherever k has one"),
    "sdpa_without_batch": Case(sdpa_mha, lambda: (randn(1, D), randn(S, D), randn(S, D)),
                               "the scores regroup the q.k product", "back to [B, H, Lq, S]"),
    "probs_returned": Case(probs_returned, inputs, "are used by 2 nodes", "do not return or reuse the attention",
                           node_line="return probs @ values(v), probs"),
    # CPU tracing takes SDPA's math path: the dropout is a multiply of the probabilities
    "dropout": Case(sdpa_dropout, inputs, "(dropout or reweighting)", "dropout_p=0", same_output=False),
    "v_per_query": Case(v_per_query, lambda: (*inputs(query_len=2), randn(B, HQ, 2, S, D)),
                        "V varies along a query row", "V indexed by batch, KV head"),
    "value_dim_in_two_runs": Case(value_dim_in_two_runs, lambda: (*inputs()[:2], randn(B, HKV, S, D // 2, 2)),
                                  "the value dim of V is not one run of one axis", "one dim of its tensor"),
    "v_batch_broadcast": Case(v_batch_broadcast, lambda: (*inputs(), randn(1, HQ, S, D)),
                              "V is not indexed by the same batch/KV-head axes as K", "the same batch and KV-head"),
    "sinks_permuted": Case(sinks_permuted, lambda: (*inputs(), randn(HQ)), "the sinks vary along part of a score dim",
                           "sinks given per query head"),
    "query_dim_in_two_runs": Case(query_dim_in_two_runs, lambda: (randn(B, HQ, 1, D // 2, 2), *inputs()[1:]),
                                  "the query's head dim is not one run of one axis", "one dim of its tensor"),
    "key_half_broadcast": Case(key_half_broadcast, lambda: (inputs()[0], randn(B, HQ, S, D // 2), inputs()[2]),
                               "the q.k product sums over a broadcast dim", "not attention's dot product"),
    "softmax_over_heads": Case(softmax_over_heads, inputs, "the softmax runs over dim 1, which also indexes queries",
                               "a softmax over heads or query positions is not attention"),
    "rope_key_broadcast": Case(rope_key_broadcast, latent_inputs, "a score term is broadcast along the softmax dim 3",
                               "every term must vary with the key position"),
    "heads_summed": Case(heads_summed, inputs, "does not sum the probabilities over the key positions of V",
                         "probs @ v must sum over the key positions of V"),
    "probs_regrouped": Case(probs_regrouped, inputs, "the value product splits a score dim differently",
                            "reshape the probabilities only back to the scores' layout"),
    "rope_query_broadcast": Case(rope_query_broadcast, latent_inputs, "the rope query is broadcast along the group dim",
                                 "a rope query that varies along the group dim"),
    "fill_over_exp": Case(fill_over_exp, lambda: (*inputs(), randn(B, HQ, 1, S)),
                          "scores are computed by aten.exp.default (not a scale, a mask or a q.k product)",
                          "only scalar scales, masks", node_line="return bias.exp().masked_fill("),
    "fill_over_sum": Case(fill_over_sum, lambda: (*inputs(), randn(B, HQ, 1, S), randn(B, HQ, 1, S)),
                          "neither side of an add on the scores comes from a q.k product",
                          "scores that do not come from q @ k are not attention", node_line="return (bias + other)"),
    "scaled_scores_returned": Case(scaled_scores_returned, lambda: (*inputs(), randn(B, 1, 1, S)),
                                   "score node mul is also used by output", "use the scores only inside the attention",
                                   node_line="return (scaled + bias).softmax(-1) @ values(v), scaled"),
    "alibi_slopes_in_pairs": Case(alibi_slopes_in_pairs, inputs, "the ALiBi slopes vary along part of a score dim",
                                  "ALiBi slopes given per query head"),
    "alibi_positions_restart": Case(alibi_positions_restart, inputs,
                                    "the ALiBi key positions vary along part of a score dim",
                                    "one [S] range along the key dim"),
    "bias_per_key_block": Case(bias_per_key_block, lambda: (*inputs(), randn(B, 2)),
                               "varies along part of a score dim", "varies along whole batch, query and key dims"),
    "positions_in_two_dims": Case(positions_in_two_dims,
                                  lambda: (randn(B, HQ, 2, 2, D), *inputs()[1:], valid_for(B, 1, 2, 2, S)),
                                  "query positions are spread over several dims", "the query positions in one dim"),
    "latent_with_two_batch_dims": Case(latent_with_two_batch_dims,
                                       lambda: (randn(2, B, 1, HQ, LATENT), randn(2, B, 1, HQ, ROPE),
                                                randn(2, B, S, LATENT), randn(2, B, S, ROPE), valid_for(2, B, 1, 1, S)),
                                       "the mask varies along a batch that spans several dims", "one batch dim",
                                       node_line="scores = scores.masked_fill(~valid, -math.inf)"),
    "integer_probabilities": Case(integer_probabilities, inputs,
                                  "the probabilities are cast from torch.float32 to torch.int64",
                                  "keep the probabilities floating point",
                                  node_line="return probs.to(torch.int64) @ values(v)"),
    "scores_keys_permuted": Case(scores_keys_permuted, inputs, "key positions are split over several runs",
                                 "the key positions in one dim of the scores"),
    "terms_with_own_heads": Case(terms_with_own_heads,
                                 lambda: (randn(B, 2, 4, 1, D), randn(B, 2, 1, S, D), randn(B, 2, 4, 1, 32),
                                          randn(B, 1, 4, S, 32), randn(B, 2, 4, S, D)),
                                 "each score term has keys per head", "one rope key for all heads"),
    "sinks_heads_regrouped": Case(sinks_heads_regrouped, lambda: (*twelve_heads(), randn(12)),
                                  "the sinks do not line up with the scores", "sinks given per query head"),
    "bias_heads_regrouped": Case(bias_heads_regrouped, lambda: (*twelve_heads(), randn(B, 12)),
                                 "does not line up with the scores", "one dim per score dim"),
    "qk_rows_regrouped": Case(qk_rows_regrouped, lambda: (randn(3, 4, 1, D), randn(4, 3, S, D), randn(12, S, D)),
                              "the operands of a q.k product do not line up over batch or head dims",
                              "q and k with the same batch and head dims"),
    "scores_regrouped": Case(scores_regrouped, lambda: (randn(3, 4, 1, D), randn(3, 4, S, D), randn(4, 3, S, D)),
                             "the scores regroup the q.k product in a way that cannot be followed",
                             "reshape the q @ k product only back to [B, H, Lq, S]"),
    "v_rows_regrouped": Case(v_rows_regrouped, lambda: (randn(3, 4, 1, D), randn(3, 4, S, D), randn(4, 3, S, D)),
                             "the probabilities and V do not line up over batch or head dims",
                             "V with the same batch and head dims as the scores"),
    "probs_viewed_regrouped": Case(probs_viewed_regrouped,
                                   lambda: (randn(3, 4, 1, D), randn(3, 4, S, D), randn(4, 3, S, D)),
                                   "views them in a way that cannot be followed back to them",
                                   "viewed only back to the scores' layout"),
    "bias_on_regrouped_scores": Case(bias_on_regrouped_scores,
                                     lambda: (randn(3, 4, 1, D), randn(3, 4, S, D), randn(3, 4, S, D),
                                              randn(4, 1, 1, S)),
                                     "regroups their dims in a way that cannot be followed",
                                     "reshapes that split or merge whole dims only",
                                     node_line="scores = ((q @ k.transpose(-1, -2)).reshape(4, 3, 1, S) + bias)"),
    "key_value_lengths_differ": Case(key_value_lengths_differ,
                                     lambda: (randn(B, HQ, 1, D), randn(B, HQ, S, D), randn(B, HQ, S, D)),
                                     "SDPA's key and value lengths differ (24 and 20)",
                                     "key and value caches of one length", same_output=False),
    "every_other_key": Case(every_other_key, lambda: (inputs()[0], randn(B, HKV, 2 * S, D), inputs()[2]),
                            "the key cache is read with a stride pattern the op cannot express",
                            "build the key cache from its tensor with views only"),
    "alibi_positions_per_sequence": Case(alibi_positions_per_sequence, inputs,
                                         "the ALiBi bias is not one slope per head times the key position",
                                         "slope[h] * key_position"),
    "mask_on_permuted_scores": Case(mask_on_permuted_scores, lambda: (*inputs(), randn(B, 4, 6)),
                                    "is a view that cannot be followed", "build the mask with views",
                                    node_line="scores = scores + bias_store.reshape(B, 1, 1, S)"),
    "cat_query_strided": Case(cat_query_strided,
                              lambda: (randn(B, HQ, 1, 3 * D), inputs()[1], randn(B, HKV, S, D // 2), inputs()[2]),
                              "the query's head dim is strided", "its last, stride-1 dim"),
    "cat_part_reordered": Case(cat_part_reordered,
                               lambda: (randn(B, HQ, 1, D + D // 2), randn(B, HKV, 4, 6, D),
                                        randn(B, HKV, S, D // 2), inputs()[2]),
                               "a part of the concatenated key cannot be followed to its source",
                               "build each part of the concatenated key from its cache with views only",
                               node_line="k = k_blocks.reshape(B, HKV, S, D)"),
    "terms_keys_reordered": Case(terms_keys_reordered, latent_inputs, "the score terms index the scores differently",
                                 "over one [B, H, Lq, S] layout"),
    "head_zero_only": Case(head_zero_only, inputs, "reads only one index of a score dim",
                           "index the attention output instead"),
    "probs_rows_regrouped": Case(probs_rows_regrouped, lambda: (*twelve_heads()[:2], randn(B, 2, S, D)),
                                 "the probabilities are regrouped in a way that cannot be followed",
                                 "reshape the probabilities only back to the scores' layout"),
}


def line_of(fn, code: str) -> str:
    """'test_skip_reasons.py:<line> in <function>' of the line of fn (or a function it calls) holding `code`."""
    for candidate in (fn, *(value for value in globals().values() if inspect.isfunction(value))):
        lines, first = inspect.getsourcelines(candidate)
        for offset, line in enumerate(lines):
            if code in line or (code.endswith("\n") and line.strip() == code.strip()):
                return f"test_skip_reasons.py:{first + offset} in {candidate.__name__}"
    raise AssertionError(f"{code!r} is in no function of this file")


def check_reason(record, case: Case) -> None:
    reason = record.reason
    assert case.seen in reason and "; to fuse: " in reason, reason
    assert case.fix in reason.split("; to fuse: ", 1)[1], reason
    assert record.location.startswith("test_skip_reasons.py:"), record.location
    if case.node_line is not None:
        where = line_of(case.fn, case.node_line)
        assert f"(at {where})" in reason or record.location == where, (where, record.location, reason)


@pytest.mark.parametrize("name", list(CASES))
def test_reason_says_what_where_and_what_would_fuse(name):
    case = CASES[name]
    torch.manual_seed(0)
    args = case.make_inputs()
    result = run_pass(case.fn, *args)
    assert result.statuses == ["skipped"] and result.after["gla"] == 0, result.reasons
    check_reason(result.records[0], case)
    if case.same_output:
        with torch.no_grad():
            expected = case.fn(*args)
        for ours, theirs in zip(*(x if isinstance(x, tuple) else (x,) for x in (result.output, expected))):
            assert_close(ours, theirs)


def test_reason_names_the_line_of_a_node_elsewhere():
    """A mask read with a stride, built in another function: the reason names that function's line."""
    torch.manual_seed(0)
    args = CASES["mask_built_elsewhere"].make_inputs()
    result = run_pass(mask_built_elsewhere, *args)
    reason = result.records[0].reason
    assert f"(at {line_of(build_mask, 'return (~valid_twice).view')})" in reason, reason
    assert result.records[0].location.endswith("in mask_built_elsewhere"), result.records[0].location


def projected_query(x, w_heads, k, v):  # w_heads [C, HQ, D]: the query projection's output viewed as heads
    q = (x @ w_heads.reshape(x.shape[-1], -1)).view(B, 1, HQ, -1).transpose(1, 2)
    return (q @ k.transpose(-1, -2) * 0.25).softmax(-1) @ v


def mha_inputs():
    return randn(B, HQ, 1, D), randn(B, HQ, S, D), randn(B, HQ, S, D)


@pytest.mark.parametrize("fn, make_inputs, dynamic, seen, fix, node_line", [
    (sdpa, lambda: inputs(query_len=3), {0: 2}, "the query length is symbolic", "a fixed number of new tokens", None),
    (sdpa, lambda: inputs(query_len=3), {0: 1, 1: 1, 2: 1}, "SDPA heads or head dim are symbolic",
     "fixed head counts and head dims", None),
    (hand_written, mha_inputs, {0: 1, 1: 1, 2: 1}, "the number of query heads is symbolic",
     "a fixed number of query heads", None),
    (projected_query, lambda: (randn(B, 1, 32), randn(32, HQ, D), *mha_inputs()[1:]), {1: 2, 2: 3, 3: 3},
     "the query's head dim shares axis 1 of mm with other dims whose strides are symbolic",
     "fixed head counts and head dims", "q = (x @ w_heads.reshape("),
])
def test_symbolic_sizes(fn, make_inputs, dynamic, seen, fix, node_line):
    """Sizes dynamo made dynamic (mark_dynamic here, {argument: dim}; in a model, a size that changed between
    calls)."""
    harness = PassHarness(fn)
    args = make_inputs()
    for index, dim in dynamic.items():
        torch._dynamo.mark_dynamic(args[index], dim)
    output = harness(*args)
    result = harness.result(output)
    check_reason(result.records[0], Case(fn, None, seen, fix, node_line))
    assert_close(output, fn(*args))


@pytest.mark.gpu
def test_sdpa_dropout_on_cuda(cuda_device):
    """On CUDA a dropout stays inside SDPA's fused kernel (on CPU it decomposes: the "dropout" case)."""
    q, k, v = (tensor.to(cuda_device) for tensor in mha_inputs())
    result = run_pass(sdpa_dropout_mha, q, k, v)
    assert result.statuses == ["skipped"] and result.after["gla"] == 0, result.reasons
    check_reason(result.records[0], Case(sdpa_dropout_mha, None, "dropout_p=0.3 is active", "dropout_p=0 at inference"))


def test_internal_error_row_says_it_is_a_bug(monkeypatch):
    """An unexpected error in the pass: the graph's row says so and what to do (report it; strict mode)."""
    def broken(graph):
        raise RuntimeError("boom")

    monkeypatch.setattr(graph_pass, "find_sites", broken)
    glacompiler.reset_report()
    graph = torch.fx.symbolic_trace(lambda x: x + 1).graph
    with pytest.raises(graph_pass.GlaPassError):
        graph_pass.AttentionRewritePass(graph_name="g")(graph)
    (record,) = glacompiler.compile_report()
    assert record.status == "skipped" and record.reason.startswith("internal error in the gla pass: RuntimeError")
    assert "; to fuse: " in record.reason and "please report it" in record.reason, record.reason
    assert "GLACOMPILER_STRICT=1" in record.reason, record.reason


def test_absorption_error_note_says_it_is_a_bug(monkeypatch):
    """An unexpected error in the absorption check: the site is fused as written, its note says why."""
    def broken(site):
        raise RuntimeError("boom")

    monkeypatch.setattr(graph_pass, "plan_absorption", broken)
    q, k, v = inputs()
    result = run_pass(sdpa, q, k, v)
    (record,) = result.records
    assert record.status == "rewritten" and result.after["gla"] == 1, record
    assert record.reason.startswith("not absorbed: internal error in the absorption check"), record.reason
    assert "; to absorb: " in record.reason and "please report it" in record.reason, record.reason
    assert_close(result.output, sdpa(q, k, v))

"""The op's kernels launched into buffers a compiled graph allocated: glacompiler::attention_into.

A compiled graph launches the portable kernels itself (compiler/rewrite/graph_launches.py). The Hopper latent
kernels are Gluon, which Inductor (torch 2.11 to 2.14) cannot compile or launch, so such a site was an op call:
through the dispatcher into our Python, which computed the key of the call's 11 tensors, allocated the outputs
(and, with several splits, the split buffers), launched the kernel, then the combine. Now the graph does all of
that but the one launch it cannot make: it allocates the buffers (Inductor's wrapper, no Python), reduces a mask's
key range and combines the splits with launches of its own, and calls attention_into, whose Python looks the
prepared call up by an int the graph passes (the plan key, made when the graph was compiled) and launches the
kernel into the buffers. It returns nothing: its buffers are the graph's.

Why a repeat may trust the plan key: the key is a hash of every argument's metadata and scalar (the buffers'
shapes, and so the split count, included), and a compiled graph passes the shapes, strides, dtypes and devices it
was compiled for: graph_launches takes static shapes only, and gives the call its fake arguments as Inductor's
eager_input_vals, which hold its inputs to exactly those strides. The plan itself is made from the key's first
real call, whose addresses' alignment (the binary is specialised on 16-byte alignment) a repeat is trusted to
keep. That holds for storages from PyTorch's allocators, whose bases are aligned, so that a tensor's alignment
is its storage offset's, which the graph fixes; and Inductor copies a graph input whose storage is not where its
own kernels assumed it. A process that loads the graph from Inductor's cache has no plan for the key: its first
call prepares one from the arguments (validating them) with the buffers' split count. Where that plan cannot write
the buffers (the real tensors are refused by the family the graph was compiled for), the op's own call runs and
its results are copied into them.
"""
from __future__ import annotations

import hashlib
import logging

import torch
from torch import Tensor

from ..kernels.common.addresses import misaligned
from ..kernels.common.split_buffers import SplitBuffers
from .prepared import PreparedCall, calls_into_buffers, prepare_call
from .validation import check_values, debug_checks_enabled

LOGGER = logging.getLogger("glacompiler")

# attention_into's arguments before its plan key and buffers: the op's, without num_splits (the buffers have it).
INTO_ARGUMENTS = ("q", "k_cache", "v_cache", "q_rope", "k_rope_cache", "cache_seqlens", "page_table", "attn_mask",
                  "softmax_scale", "causal", "kv_range", "softcap", "alibi_slopes", "sinks", "window_left",
                  "window_right")
INTO_SCHEMA = (
    "attention_into(Tensor q, Tensor k_cache, Tensor? v_cache, Tensor? q_rope, Tensor? k_rope_cache, "
    "Tensor? cache_seqlens, Tensor? page_table, Tensor? attn_mask, float softmax_scale, bool causal, "
    "Tensor? kv_range, float softcap, Tensor? alibi_slopes, Tensor? sinks, int window_left, int window_right, "
    "int plan_key, Tensor(a!) out, Tensor(b!) lse) -> ()"
)


def _described(value) -> object:
    """An argument as the plan key holds it: a tensor by its metadata (its alignment as misaligned reads it: a
    graph's fake tensors have no address), anything else as it is."""
    if isinstance(value, Tensor):
        return (tuple(value.shape), tuple(value.stride()), str(value.dtype), str(value.device), misaligned(value))
    return value


def plan_key(arguments: tuple) -> int:
    """A 63-bit hash of attention_into's arguments but the key (INTO_ARGUMENTS, then out and lse). A stable hash,
    not Python's salted one: the key is a constant of the graph's code, and Inductor finds its cached graphs by
    that code, so a key that changed with the process would miss the cache every time."""
    described = repr(tuple(_described(value) for value in arguments)).encode()
    return int.from_bytes(hashlib.blake2b(described, digest_size=8).digest(), "little") >> 1


def traced_call_into(prepared: PreparedCall, arguments: dict) -> tuple[Tensor, Tensor]:
    """Under traced_launches, with the graph's fake values: (out, lse) of the op call `arguments` (by name) as the
    graph makes them: its allocations, the mask's key range where the call has none, attention_into, the
    combine."""
    plan = prepared.plan
    arguments = dict(arguments)
    arguments["cache_seqlens"], arguments["page_table"] = prepared.contiguous_lengths_and_pages(
        arguments["cache_seqlens"], arguments["page_table"])
    if arguments["attn_mask"] is not None and arguments["kv_range"] is None:
        arguments["kv_range"] = plan.keys.reduce_range(arguments["attn_mask"])
    split_out, split_lse, out, lse = plan.buffers.allocate(arguments["q"])
    given = (*(arguments[name] for name in INTO_ARGUMENTS), split_out, split_lse)
    torch.ops.glacompiler.attention_into.default(*given[:-2], plan_key(given), split_out, split_lse)
    plan.buffers.combine(split_out, split_lse, out, lse)
    return out, lse


def _prepare(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale, causal,
             kv_range, softcap, alibi_slopes, sinks, window_left, window_right, out, lse) -> PreparedCall:
    """A first call's PreparedCall (validated), with the buffers' split count, into_buffers set where its plan
    launches into them. Where it does not (a tensor the graph was compiled for as aligned is not, and the Hopper
    family refuses it), the op's own call, whose results run_into copies into the buffers."""
    arguments = (q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale,
                 causal)
    extensions = (kv_range, softcap, alibi_slopes, sinks, (window_left, window_right))
    prepared = prepare_call(*arguments, SplitBuffers.split_count_of(out), *extensions)
    plan = prepared.plan
    if (plan is not None and hasattr(plan, "launch_into") and not (prepared.copy_seqlens or prepared.copy_page_table)
            and plan.buffers.are_targets(q, out, lse)):
        prepared.into_buffers = True
        return prepared
    LOGGER.warning("glacompiler: a compiled site's kernels cannot write its graph's buffers (out %s, lse %s) at run "
                   "time; it runs the op's own call and copies the results", tuple(out.shape), tuple(lse.shape))
    return prepare_call(*arguments, 0, *extensions)


def _copy_as_first_split(results: tuple[Tensor, Tensor], out: Tensor, lse: Tensor) -> None:
    """The op's (out, lse) written into the buffers: as they are with one split, else as the first split, the others
    empty (lse -inf, weight 0 in the graph's combine)."""
    result_out, result_lse = results
    if out.dim() == result_out.dim():
        out.copy_(result_out)
        lse.copy_(result_lse)
        return
    out.zero_()
    out.select(3, 0).copy_(result_out)
    lse.fill_(float("-inf"))
    lse.select(3, 0).copy_(result_lse)


def run_into(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale, causal,
             kv_range, softcap, alibi_slopes, sinks, window_left, window_right, plan_key, out, lse) -> None:
    """attention_into on CUDA: the prepared call of plan_key (prepared at the key's first call) launched into out
    and lse."""
    prepared = calls_into_buffers.get(plan_key)
    if prepared is None:
        prepared = calls_into_buffers.remember(plan_key, _prepare(
            q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale, causal,
            kv_range, softcap, alibi_slopes, sinks, window_left, window_right, out, lse))
    elif debug_checks_enabled():  # what prepared_call checks on a repeat
        check_values(k_cache, cache_seqlens, page_table, prepared.shape, attn_mask)
    if prepared.into_buffers:
        prepared.plan.launch_into(out, lse, q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table,
                                  attn_mask, kv_range, alibi_slopes, sinks)
    else:
        _copy_as_first_split(prepared.run(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table,
                                          attn_mask, kv_range, alibi_slopes, sinks), out, lse)

"""Prepared op calls: the op's host path for repeat calls.

A decode step calls the op once per layer with the same shapes every step. The first call with a given
metadata key validates the arguments, picks the kernel family and config and builds the family's launch plan
(kernel, grid, constexprs, int arguments, buffer shapes; the compiled binary after its first launch). A repeat
computes the key, looks the plan up and runs it: allocate the outputs, fill in the tensor arguments, call the
compiled launcher.

Why a repeat may skip validation: the key holds every tensor argument's shape, strides, dtype, device and
16-byte alignment, and every scalar argument; validate_inputs and the family/config choice read nothing else
(the checks that read values, check_values, run on every call where they run at all: the CPU path always, a
GPU with GLACOMPILER_DEBUG=1 here). So a call that would fail validation has a key no validated call had: it
takes the first-call path and raises there. The scalars' Python types are the schema's (the dispatcher converts
them), so 1.0 and True cannot share a key with different verdicts.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from ..kernels.common.launch_device import other_cuda_device
from ..memo import BoundedMemo
from ..spec import AttentionSpec, ProblemShape
from ..kernels import choose_family, family_of_config
from .dispatch import choose_config, empty_outputs, kernel_family, validated_call
from .validation import check_values, debug_checks_enabled

# metadata key -> PreparedCall
_prepared = BoundedMemo(1024)
# (metadata key, config) -> PreparedCall of a call with an explicit config (the tuner's, benchmarks'): a plan keeps
# state between calls (a fused combine's counts, made at its first call), so a graph captured from a repeat call
# runs the plan an earlier call made.
_prepared_with_config = BoundedMemo(256)
# wrapper_key -> WrapperCall: the eager wrapper's validated calls (glacompiler/op/__init__.py)
wrapper_calls = BoundedMemo(1024)
# plan key -> PreparedCall of attention_into, the op's kernels launched into a compiled graph's buffers
# (op/into_buffers.py)
calls_into_buffers = BoundedMemo(1024)


def _metadata(tensor: Tensor) -> tuple:
    return tensor.shape, tensor.stride(), tensor.dtype, tensor.device, tensor.data_ptr() % 16


def _tensors_metadata(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, kv_range,
                      alibi_slopes, sinks) -> tuple:
    """Every tensor argument's metadata, None for each absent one (spelled out: this runs on every call)."""
    return (_metadata(q), _metadata(k_cache),
            None if v_cache is None else _metadata(v_cache),
            None if q_rope is None else _metadata(q_rope),
            None if k_rope_cache is None else _metadata(k_rope_cache),
            None if cache_seqlens is None else _metadata(cache_seqlens),
            None if page_table is None else _metadata(page_table),
            None if attn_mask is None else _metadata(attn_mask),
            None if kv_range is None else _metadata(kv_range),
            None if alibi_slopes is None else _metadata(alibi_slopes),
            None if sinks is None else _metadata(sinks))


def call_key(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale, causal,
             num_splits, kv_range, softcap, alibi_slopes, sinks, window_left, window_right) -> tuple:
    """Everything validation and the kernel choice read of a call (the tuned tables aside: clear_prepared_calls
    runs when they change)."""
    return (_tensors_metadata(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                              kv_range, alibi_slopes, sinks),
            softmax_scale, causal, num_splits, softcap, window_left, window_right)


def wrapper_key(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, kv_range,
                softmax_scale, causal, num_splits, softcap, alibi_slopes, sinks, window_size):
    """call_key for the Python wrapper, whose scalars are the user's: their types are part of it (True and 1.0
    compare equal but only one is a valid softcap), and window_size by its entries' types too."""
    return (_tensors_metadata(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                              kv_range, alibi_slopes, sinks),
            type(softmax_scale), softmax_scale, type(causal), causal, type(num_splits), num_splits,
            type(softcap), softcap, type(window_size), *map(type, window_size), *window_size)


class WrapperCall:
    """A validated call of the eager wrapper: its softmax scale, and (once it has run on the kernels directly) the
    PreparedCall its key holds, so that a repeat computes one key, not the wrapper's and then the op's."""

    __slots__ = ("scale", "prepared")

    def __init__(self, scale: float):
        self.scale, self.prepared = scale, None


class PreparedCall:
    """A validated call's shape, its family's launch plan, and the copies the kernels need of strided lengths
    or page tables (rare). into_buffers: its plan launches into buffers a compiled graph allocates
    (op/into_buffers.py): a traced call whose kernels the graph cannot launch, or attention_into's call."""

    __slots__ = ("shape", "plan", "copy_seqlens", "copy_page_table", "into_buffers")

    def __init__(self, shape: ProblemShape, plan, copy_seqlens: bool, copy_page_table: bool,
                 into_buffers: bool = False):
        self.shape, self.plan = shape, plan
        self.copy_seqlens, self.copy_page_table = copy_seqlens, copy_page_table
        self.into_buffers = into_buffers

    def run(self, q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, kv_range,
            alibi_slopes, sinks, *, hold_workspace: bool = False, keep_lse: bool = True):
        """(out, lse); hold_workspace: the eager wrapper's direct path (SplitBuffers.allocate_for_call's hold);
        keep_lse False: the caller drops lse, which may then be a buffer the next call overwrites."""
        if self.plan is None:  # a batch of 0 sequences
            return empty_outputs(q, k_cache, v_cache)
        device = other_cuda_device(q)
        if device >= 0:  # (the kernels, their buffers' streams and workspaces: all of q's device)
            with torch.cuda.device(device):
                return self.run(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                kv_range, alibi_slopes, sinks, hold_workspace=hold_workspace, keep_lse=keep_lse)
        if self.copy_seqlens or self.copy_page_table:
            cache_seqlens, page_table = self.contiguous_lengths_and_pages(cache_seqlens, page_table)
        return self.plan.run(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                             kv_range, alibi_slopes, sinks, hold_workspace=hold_workspace, keep_lse=keep_lse)

    def contiguous_lengths_and_pages(self, cache_seqlens, page_table) -> tuple:
        """(cache_seqlens, page_table) as the kernels read them: the copies validated_call made for the first call
        where they are strided (rare)."""
        if self.copy_seqlens:
            cache_seqlens = cache_seqlens.contiguous()
        if self.copy_page_table:
            page_table = page_table.contiguous()
        return cache_seqlens, page_table


def prepare_call(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale,
                 causal, num_splits, kv_range, softcap, alibi_slopes, sinks, window_size, traced: bool = False,
                 graph_family_wanted: Optional[Callable[[AttentionSpec, ProblemShape], bool]] = None,
                 config=None) -> Optional[PreparedCall]:
    """The first call of a key: validate (ValueError/TypeError naming the argument), choose, plan. traced: for
    fake tensors, to trace the plan's launches into a graph (compiler/rewrite/graph_launches.py): no value checks,
    and None where there is nothing to launch or the family's kernels cannot be launched by a graph. For such a
    call, graph_family_wanted(spec, shape) says whether to plan it on the first family that supports it and that
    a graph can launch instead (the portable kernels for a Hopper latent call), with that family's config; else a
    family whose plans launch into given buffers keeps the call (into_buffers). config: the user's, which names the
    family (ValueError where that family cannot run the call)."""
    spec, shape, call, copy_seqlens, copy_page_table = validated_call(
        q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale, causal,
        kv_range, softcap, alibi_slopes, sinks, window_size, read_values=not traced)
    if shape.batch == 0:
        return None if traced else PreparedCall(shape, None, False, False)
    if config is not None:
        family = family_of_config(config)
        reason = family.supports(spec, shape, call) or family.config_problem(config, spec)
        if reason is not None:
            raise ValueError(f"config: the {family.name} kernels cannot run this call ({reason})")
        return PreparedCall(shape, family.prepare(call, spec, shape, config), copy_seqlens, copy_page_table)
    family = kernel_family(spec, shape, call)
    into_buffers = False
    if traced and not family.launches_in_graph:
        wanted = graph_family_wanted is not None and graph_family_wanted(spec, shape)
        in_graph = choose_family(spec, shape, call, in_graph_only=True) if wanted else None
        if in_graph is not None:
            family = in_graph
        elif family.launches_into_buffers:
            into_buffers = True
        else:
            return None
    config = choose_config(family, spec, shape, call.q.device, num_splits)
    return PreparedCall(shape, family.prepare(call, spec, shape, config), copy_seqlens, copy_page_table,
                        into_buffers)


def prepared_call(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale,
                  causal, num_splits, kv_range=None, softcap=0.0, alibi_slopes=None, sinks=None, window_left=-1,
                  window_right=-1) -> PreparedCall:
    """The PreparedCall of a call with the schema's argument types: the first call of its key validates, chooses
    and plans (and raises where validation does); a repeat runs the value checks under GLACOMPILER_DEBUG=1."""
    key = call_key(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale,
                   causal, num_splits, kv_range, softcap, alibi_slopes, sinks, window_left, window_right)
    prepared = _prepared.get(key)
    if prepared is None:
        prepared = prepare_call(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                softmax_scale, causal, num_splits, kv_range, softcap, alibi_slopes, sinks,
                                (window_left, window_right))
        _prepared.remember(key, prepared)
    elif debug_checks_enabled():  # what validate_inputs would check of the values (a first call has)
        check_values(k_cache, cache_seqlens, page_table, prepared.shape, attn_mask)
    return prepared


def run_prepared(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale,
                 causal, num_splits, kv_range=None, softcap=0.0, alibi_slopes=None, sinks=None, window_left=-1,
                 window_right=-1):
    """The op on kernels (CUDA, or the interpreter on CPU), with arguments as the schema types them."""
    return prepared_call(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                         softmax_scale, causal, num_splits, kv_range, softcap, alibi_slopes, sinks, window_left,
                         window_right).run(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table,
                                           attn_mask, kv_range, alibi_slopes, sinks)


def run_prepared_with_config(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                             softmax_scale: float, causal: bool, config, softcap=0.0, alibi_slopes=None, sinks=None,
                             window_size=(-1, -1)):
    """The op on kernels with an explicit config, which names the family (ValueError where it cannot run)."""
    key = (call_key(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, softmax_scale,
                    causal, 0, None, softcap, alibi_slopes, sinks, *window_size), config)
    prepared = _prepared_with_config.get(key)
    if prepared is None:
        prepared = prepare_call(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask,
                                softmax_scale, causal, 0, None, softcap, alibi_slopes, sinks, window_size,
                                config=config)
        _prepared_with_config.remember(key, prepared)
    elif debug_checks_enabled():
        check_values(k_cache, cache_seqlens, page_table, prepared.shape, attn_mask)
    return prepared.run(q, k_cache, v_cache, q_rope, k_rope_cache, cache_seqlens, page_table, attn_mask, None,
                        alibi_slopes, sinks)


def clear_prepared_calls() -> None:
    """Forget every prepared call (after the tuned tables changed, or in tests)."""
    _prepared.clear()
    _prepared_with_config.clear()
    wrapper_calls.clear()
    calls_into_buffers.clear()

"""Launch the portable split-KV kernel (and, with several splits, the shared LSE combine, or the kernel's own merge
where the config fuses it). No host-device sync: everything here depends on shapes, never on tensor values."""
from __future__ import annotations

import logging
from typing import Optional

import torch
from torch import Tensor

from ...spec import AttentionSpec, ProblemShape
from ..common.dependent_launch import combine_launches_dependent
from ..common.extensions import kernel_extensions
from ..common.key_bounds import KeyBoundsPlan
from ..common.split_buffers import SplitBuffers
from ..common.tiles import next_power_of_two
from ..common.triton_launch import LaunchSequence, PreparedLaunch, launch, tracing_launches
from ..family import KernelCall
from .config import PortableConfig, resident_programs
from .render import decode_kernel_module

LOGGER = logging.getLogger("glacompiler")
# Positions in run's launch arguments of the lengths, the key range's rows and the mask (KeyBoundsPlan.jit_forms).
LENGTHS_ARGUMENT, KV_BEGIN_ARGUMENT, KV_END_ARGUMENT, MASK_DENSE_ARGUMENT, MASK_ARGUMENT = 5, 6, 7, 8, 10

# Pipeline depth that fits, per (kernel module, config, launch specialisation). A config is tuned without a
# mask; the per-row mask tile and its cross-row reduction take shared memory some wide configs (MLA's 512-wide
# accumulator) lack, so such a launch steps down to fewer stages once and remembers it.
_FITTING_STAGES: dict = {}
# Every fused combine's counts, never freed: a CUDA graph captured from a plan keeps their address after the plan is
# gone (evicted from the prepared calls, or dropped when the tables change), and memory reused under it would decide
# the last split wrongly. A few KiB per plan (one int32 per program of a split).
_KEPT_COUNTS: list = []


def _fitting_key(module_name: str, config: PortableConfig, constexprs: dict) -> tuple:
    return module_name, config, tuple(constexprs.items())  # the plan builds constexprs in one fixed order


def _launch_fitting(kernel, grid, args: tuple, constexprs: dict, config: PortableConfig, module_name: str):
    from triton.runtime.errors import OutOfResources  # late: the interpreter must be chosen before triton loads

    key = _fitting_key(module_name, config, constexprs)
    stages = _FITTING_STAGES.get(key, config.num_stages)
    while True:
        try:
            compiled = launch(kernel, grid, args, constexprs, config.num_warps, stages)
        except OutOfResources as error:
            if stages == 1:
                raise
            LOGGER.warning("%s: %s does not fit with %s at num_stages=%d (%s); trying %d stages", module_name,
                           config, constexprs, stages, error, stages - 1)
            stages -= 1
            continue
        _FITTING_STAGES[key] = stages
        return compiled


class PortableLaunchPlan:
    """Everything a portable launch derives from a call's metadata (shapes, strides, dtypes, alignment, scalars):
    kernel, grid, constexprs, the int arguments, key-bounds and split-buffer plans. Built from a first call;
    `run` takes the tensors of any call with the same metadata (glacompiler/op/prepared.py keys them)."""

    def __init__(self, call: KernelCall, spec: AttentionSpec, shape: ProblemShape, config: PortableConfig):
        q, k_cache, v_cache, k_rope_cache, page_table = (call.q, call.k_cache, call.v_cache, call.k_rope_cache,
                                                         call.page_table)
        batch, query_len, num_q_heads, _ = q.shape
        group = spec.group_size
        num_splits = config.num_splits
        rows = group * query_len
        grid = (spec.num_kv_heads * -(-rows // config.block_m) * config.dv_split, batch, num_splits)
        # A separate combine on a capable GPU launches dependent on the split kernel, which signals it at its start,
        # where the split programs leave slots free (dependent_launch.py). (With a fused combine, the launches a
        # graph or a capture takes instead and their combine stay ordinary.)
        self.signals_combine = (num_splits > 1 and not config.fused_combine and combine_launches_dependent(
            q.device, grid[0] * grid[1] * grid[2], resident_programs(config.block_m, config.num_warps)))
        self.buffers = SplitBuffers(q, spec.head_dim_v, num_splits, dependent_combine=self.signals_combine)
        values = k_cache if v_cache is None else v_cache
        q_rope_arg = q if call.q_rope is None else call.q_rope
        extensions = kernel_extensions(call.softmax_scale, call.softcap, call.alibi_slopes, call.sinks,
                                       call.window_size)
        self.keys = KeyBoundsPlan(call.attn_mask, call.kv_range, call.cache_seqlens, batch, num_q_heads, query_len,
                                  shape.capacity, call.causal, q.device, extensions.positions_matter)
        strides = (
            *q.stride()[:3],
            *k_cache.stride()[:3],
            *values.stride()[:3],
            *q_rope_arg.stride()[:3],
            *((0, 0) if k_rope_cache is None else k_rope_cache.stride()[:2]),
            0 if page_table is None else page_table.stride(0),
            *self.keys.mask_strides,
            *self.buffers.out_strides,
            *self.buffers.lse_strides,
        )
        scalars = (
            extensions.qk_scale_log2,
            num_splits,
            shape.capacity,
            k_cache.shape[0] if page_table is not None else 1,  # pages: page ids are bounded by it
            extensions.alibi_batch_stride,
            extensions.softcap_scale,
            extensions.window_left,
            extensions.window_right,
        )
        constexprs = dict(
            G=group,
            LQ=query_len,
            PAGE_SIZE=max(shape.page_size, 1),
            BLOCK_M=config.block_m,
            BLOCK_N=config.block_n,
            **self.keys.mask_flags,
            # With one query token every key below the length is visible: causality changes nothing.
            CAUSAL=call.causal and query_len > 1,
            **extensions.flags,
        )
        self.tail = (*strides, *scalars)

        def prepared(module, pass_constexprs: dict, pass_label: str, traced_module=None) -> PreparedLaunch:
            """traced_module: the kernel a graph's launch takes instead (the one without a dependent-launch signal)."""
            kernel = module.decode_attention_split_kernel

            def first_launch(args):
                compiled = _launch_fitting(kernel, grid, args, pass_constexprs, config, module.__name__)
                if LOGGER.isEnabledFor(logging.DEBUG):
                    # Registers, spills and shared memory of the compiled kernel: the first things to read when a
                    # config is slow.
                    # (five arguments: the tuner's _CompiledResourceRecorder reads this record)
                    LOGGER.debug("%s %s: regs %s, spills %s, shared %s", f"{spec.key()}{pass_label}", config,
                                 getattr(compiled, "n_regs", "?"), getattr(compiled, "n_spills", "?"),
                                 getattr(getattr(compiled, "metadata", None), "shared", "?"))
                return compiled

            # (the stages a launch of this form fitted in, for a launch traced into a graph)
            stages = _FITTING_STAGES.get(_fitting_key(module.__name__, config, pass_constexprs), config.num_stages)
            traced_form = None if traced_module is None else (traced_module.decode_attention_split_kernel,
                                                              pass_constexprs)
            return PreparedLaunch(kernel, grid, pass_constexprs, config.num_warps, stages, first_launch,
                                  jit_forms=self.keys.jit_forms(MASK_ARGUMENT, LENGTHS_ARGUMENT, KV_BEGIN_ARGUMENT,
                                                                KV_END_ARGUMENT, MASK_DENSE_ARGUMENT),
                                  traced_form=traced_form)

        # With a mask, two passes (the template says why): the sequences whose mask is dense, then the others. A
        # program whose sequence is the other pass's gets an empty split and no rows: it reads and stores nothing.
        passes = ((True, " dense pass"), (False, " sparse pass")) if self.keys.has_mask else ((False, ""),)
        module = decode_kernel_module(spec, config.block_d, config.preload_q, config.dv_split)
        traced_module = None  # (a graph launches the same kernel)
        if self.signals_combine:  # (a graph launches the kernel without the signal)
            module, traced_module = decode_kernel_module(spec, config.block_d, config.preload_q, config.dv_split,
                                                         signal_dependents=True), module
        self.launches = LaunchSequence(prepared(module, {**constexprs, "DENSE_PASS": dense}, label, traced_module)
                                       for dense, label in passes)
        # With a fused combine, the kernel's variant that merges (the family resolves an open choice); a graph traced
        # from this plan (compiler/rewrite/graph_launches.py) still takes the launches above and the combine: the
        # counts would be a tensor the graph did not allocate. The counts are made at the first call that runs.
        self.fused = bool(config.fused_combine)  # (False with one split: PortableConfig sees to it)
        self.split_counts: Optional[Tensor] = None
        self.count_slots = batch * grid[0]
        if self.fused:
            fused = decode_kernel_module(spec, config.block_d, config.preload_q, config.dv_split, True)
            self.fused_tail = (*strides, *self.buffers.merged_strides, *scalars)
            self.fused_launches = LaunchSequence(
                prepared(fused, {**constexprs, "DENSE_PASS": dense, "SPLITS_POW2": next_power_of_two(num_splits)},
                         label + " fused combine") for dense, label in passes)

    def _counts(self, q: Tensor) -> Optional[Tensor]:
        """The fused combine's counts, or None where this call cannot use them (traced; captured before a call ran:
        zeros made in a capture are zeroed only when the graph replays)."""
        if tracing_launches():
            return None
        counts = self.split_counts
        if counts is None:
            if q.is_cuda and torch.cuda.is_current_stream_capturing():
                return None
            counts = self.split_counts = torch.zeros(self.count_slots, dtype=torch.int32, device=q.device)
            _KEPT_COUNTS.append(counts)
        return counts

    def run(self, q: Tensor, k_cache: Tensor, v_cache: Optional[Tensor], q_rope: Optional[Tensor],
            k_rope_cache: Optional[Tensor], cache_seqlens: Optional[Tensor], page_table: Optional[Tensor],
            attn_mask: Optional[Tensor], kv_range: Optional[Tensor], alibi_slopes: Optional[Tensor],
            sinks: Optional[Tensor], *, hold_workspace: bool = False,
            keep_lse: bool = True) -> tuple[Tensor, Tensor]:
        """(out, lse) of a call; hold_workspace, keep_lse: SplitBuffers.allocate_for_call's hold and keep_lse."""
        lengths, mask, kv_begin, kv_end, mask_dense = self.keys.resolve(attn_mask, kv_range, cache_seqlens)
        split_out, split_lse, out, lse = self.buffers.allocate_for_call(q, hold_workspace, keep_lse)
        tensors = (
            q, k_cache, k_cache if v_cache is None else v_cache, q if q_rope is None else q_rope,
            k_cache if k_rope_cache is None else k_rope_cache, lengths, kv_begin, kv_end, mask_dense,
            lengths if page_table is None else page_table,  # a placeholder when contiguous
            mask, split_out, split_lse, q if alibi_slopes is None else alibi_slopes, q if sinks is None else sinks,
        )
        counts = self._counts(q) if self.fused else None
        if counts is not None:
            self.fused_launches((*tensors, out, lse, counts, *self.fused_tail))
            return out, lse
        self.launches((*tensors, *self.tail))
        self.buffers.combine(split_out, split_lse, out, lse)
        return out, lse

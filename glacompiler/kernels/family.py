"""What every kernel family offers the op and the tuner.

A family is one package under glacompiler/kernels/ with its template(s) under templates/<family>/, its config
type and heuristic, a `supports` that says why it cannot run a call (None when it can), its launcher, and its
tuning description (search space, resource check). The op runs a call on the first family of the registry
(kernels/__init__.py) that supports it; the tuner and the config tables reach every family through this class.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

from ..spec import AttentionSpec, ProblemShape
from .common.splits import HEURISTIC_MAX_SPLITS

Config = Any  # a family's frozen config dataclass (with num_splits, to_dict and from_dict)


@dataclasses.dataclass(slots=True)
class KernelCall:
    """The tensors and scalars of one op call, as validated (see glacompiler.op)."""

    q: Tensor
    k_cache: Tensor
    v_cache: Optional[Tensor]
    q_rope: Optional[Tensor]
    k_rope_cache: Optional[Tensor]
    cache_seqlens: Optional[Tensor]
    page_table: Optional[Tensor]
    attn_mask: Optional[Tensor]
    softmax_scale: float
    causal: bool
    kv_range: Optional[Tensor] = None  # the mask's key range, when the caller computed it once for several calls
    # FlashAttention's extensions (see glacompiler.reference): off by default.
    softcap: float = 0.0
    alibi_slopes: Optional[Tensor] = None
    sinks: Optional[Tensor] = None
    window_size: tuple = (-1, -1)


def open_choices(config: Config) -> tuple:
    """Names of the config's fields left None: choices that a table tuned before they existed did not make (the
    family makes them when it runs the config; the tuner tunes such a bucket again)."""
    return tuple(field.name for field in dataclasses.fields(config) if getattr(config, field.name) is None)


@dataclasses.dataclass(frozen=True)
class ResourceCheck:
    """A family's verdict on one config before it is compiled."""

    excess: float  # > 0: the config cannot launch, or would spill heavily, on the device checked against
    description: str  # what was counted, for the pruned trial's record
    model: dict  # the model's numbers (stored with each timed trial, to compare with what the compiler used)


class KernelFamily:
    name: str = ""
    config_type: type = object
    # Whether a compiled graph may launch this family's kernels itself (its launch plan traced into the graph with
    # wrap_triton): Triton JIT kernels; Inductor (torch 2.11 to 2.14) cannot compile or launch Gluon ones.
    launches_in_graph: bool = False
    # Whether its launch plans have launch_into (the kernels written into buffers the caller allocated, which
    # `buffers.allocate` describes, the split combine left to the caller): a compiled graph then allocates them and
    # launches the combine itself, and calls the op only for the kernels it cannot launch (op/into_buffers.py).
    launches_into_buffers: bool = False

    def supports(self, spec: AttentionSpec, shape: ProblemShape, call: KernelCall) -> Optional[str]:
        """None when this family runs the call, else the reason it does not (for logs, reports and tests)."""
        raise NotImplementedError

    def spec_problem(self, spec: AttentionSpec, shape: ProblemShape, device: torch.device) -> Optional[str]:
        """The checks of `supports` that need no tensors (device, head layout, page size): the tuner plans with
        them. None where calls with well-laid-out tensors run on this family."""
        raise NotImplementedError

    def heuristic_config(self, spec: AttentionSpec, shape: ProblemShape, multiprocessors: int,
                         card: str = "") -> Config:
        """The untuned choice for a call on a GPU of `multiprocessors` SMs named `card` (device_card; "" where
        unknown: the family's default costs)."""
        raise NotImplementedError

    def config_problem(self, config: Config, spec: AttentionSpec) -> Optional[str]:
        """Why an explicit config cannot run this spec, or None."""
        if not isinstance(config, self.config_type):
            return f"a {type(config).__name__} is not a config of the {self.name} kernels"
        return None

    def with_splits(self, config: Config, num_splits: int) -> Config:
        return dataclasses.replace(config, num_splits=num_splits)

    def programs_per_split(self, spec: AttentionSpec, shape: ProblemShape, config: Config) -> int:
        """Programs one launch runs per KV split (the parallelism a split count multiplies)."""
        raise NotImplementedError

    def longest_useful_splits(self, spec: AttentionSpec, shape: ProblemShape, config: Config) -> int:
        """More splits than this leave a split without a whole key block."""
        raise NotImplementedError

    def rescale_config(self, config: Config, spec: AttentionSpec, tuned: ProblemShape,
                       wanted: ProblemShape) -> Config:
        """A config tuned for a neighbouring bucket, with its split count scaled so that programs x splits (the
        parallelism the tuner picked) stays the same."""
        tuned_programs = self.programs_per_split(spec, tuned, config)
        wanted_programs = self.programs_per_split(spec, wanted, config)
        splits = round(config.num_splits * tuned_programs / wanted_programs)
        # Past the heuristic's cap only as far as the tuner went: more splits were slower for most kinds.
        cap = max(HEURISTIC_MAX_SPLITS, config.num_splits)
        splits = max(1, min(splits, self.longest_useful_splits(spec, wanted, config), cap))
        return self.with_splits(config, splits)

    def prepare(self, call: KernelCall, spec: AttentionSpec, shape: ProblemShape, config: Config):
        """A launch plan for calls with this call's metadata (shapes, strides, dtypes, devices, 16-byte alignment,
        scalars): everything the launch derives from them, worked out once. Its `run(q, k_cache, v_cache, q_rope,
        k_rope_cache, cache_seqlens, page_table, attn_mask, kv_range, alibi_slopes, sinks, *, hold_workspace=False,
        keep_lse=True)` launches one such call and returns (out [B, Lq, Hq, Dv], lse [B, Lq, Hq] float32);
        hold_workspace: the eager wrapper's direct path, which may hold its split partials, and its lse where
        keep_lse is False (kernels/common/split_workspace.py)."""
        raise NotImplementedError

    def launch(self, call: KernelCall, spec: AttentionSpec, shape: ProblemShape, config: Config) -> tuple[Tensor, Tensor]:
        """Run one call: (out [B, Lq, Hq, Dv], lse [B, Lq, Hq] float32)."""
        return self.prepare(call, spec, shape, config).run(
            call.q, call.k_cache, call.v_cache, call.q_rope, call.k_rope_cache, call.cache_seqlens, call.page_table,
            call.attn_mask, call.kv_range, call.alibi_slopes, call.sinks)

    def kernels_version(self) -> str:
        """A hash of the family's kernel code: tuned tables made for other kernels are stale."""
        raise NotImplementedError

    def variant_versions(self) -> dict:
        """{'<family>+<variant>': hash} of kernel variants that only some configs run (an opt-in choice rendered as
        another kernel): a table records one beside the family's version for the entries that run it, so a change
        to a variant leaves the other entries current."""
        return {}

    def config_variants(self, config: Config, spec: AttentionSpec) -> tuple:
        """The keys of variant_versions a config runs."""
        return ()

    # Tuning (glacompiler.tuning reaches every family through these two).
    def search_space(self, spec: AttentionSpec, shape: ProblemShape, multiprocessors: int,
                     include: Sequence[Config] = ()):
        """The configs worth timing for one bucket (a kernels.common.search_space.SearchSpace)."""
        raise NotImplementedError

    def resource_check(self, spec: AttentionSpec, config: Config, limits) -> ResourceCheck:
        """Whether the config fits a device with these DeviceLimits: the tuner prunes what does not without
        compiling it."""
        raise NotImplementedError

    def config_from_dict(self, data: dict) -> Config:
        return self.config_type.from_dict(data)

    def resolved_config(self, config: Config, spec: AttentionSpec) -> Config:
        """The config with every choice it leaves open (None: see open_choices) made as the family makes it."""
        return config

    def __repr__(self) -> str:
        return f"<kernel family {self.name}>"

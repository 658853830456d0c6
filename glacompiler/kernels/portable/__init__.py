"""The portable split-KV kernels: Triton (templates/portable/), any head layout of the family, any GPU Triton
supports, and the Triton interpreter on CPU. Query heads of a KV group and the draft tokens are packed into the
M of tl.dot; head dims are unrolled into power-of-two chunks; the KV range is split across programs and merged
by LSE (kernels/common/combine.py)."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from ...spec import AttentionSpec, ProblemShape
from ..common.interpreter import triton_interpreter_enabled
from ..family import KernelCall, KernelFamily, ResourceCheck
from .config import PortableConfig, fused_combine_default, heuristic_config, programs_per_split
from .launch import PortableLaunchPlan


class PortableFamily(KernelFamily):
    name = "portable"
    launches_in_graph = True
    config_type = PortableConfig

    def supports(self, spec: AttentionSpec, shape: ProblemShape, call: KernelCall) -> Optional[str]:
        return self.spec_problem(spec, shape, call.q.device)  # every head layout and stride the op validates

    def spec_problem(self, spec: AttentionSpec, shape: ProblemShape, device: torch.device) -> Optional[str]:
        if device.type != "cuda" and not triton_interpreter_enabled():
            return "CPU tensors run PyTorch's CPU attention unless TRITON_INTERPRET=1"
        return None

    def resolved_config(self, config: PortableConfig, spec: AttentionSpec) -> PortableConfig:
        if config.fused_combine is not None:
            return config
        return dataclasses.replace(config, fused_combine=fused_combine_default(spec, config))

    def heuristic_config(self, spec: AttentionSpec, shape: ProblemShape, multiprocessors: int,
                         card: str = "") -> PortableConfig:
        return heuristic_config(spec, shape.batch, shape.capacity, shape.query_len, multiprocessors, shape.page_size)

    def programs_per_split(self, spec: AttentionSpec, shape: ProblemShape, config: PortableConfig) -> int:
        return programs_per_split(spec, shape, config)

    def longest_useful_splits(self, spec: AttentionSpec, shape: ProblemShape, config: PortableConfig) -> int:
        return max(1, shape.capacity // config.block_n)

    def prepare(self, call: KernelCall, spec: AttentionSpec, shape: ProblemShape, config: PortableConfig):
        return PortableLaunchPlan(call, spec, shape, self.resolved_config(config, spec))

    def kernels_version(self) -> str:
        from .render import portable_kernels_version

        return portable_kernels_version()

    def variant_versions(self) -> dict:
        from .render import FUSED_COMBINE_VARIANT, fused_combine_kernels_version

        return {f"{self.name}+{FUSED_COMBINE_VARIANT}": fused_combine_kernels_version()}

    def config_variants(self, config: PortableConfig, spec: AttentionSpec) -> tuple:
        from .render import FUSED_COMBINE_VARIANT

        fuses = self.resolved_config(config, spec).fused_combine  # (False with one split)
        return (f"{self.name}+{FUSED_COMBINE_VARIANT}",) if fuses else ()

    def search_space(self, spec: AttentionSpec, shape: ProblemShape, multiprocessors: int,
                     include: Sequence[PortableConfig] = ()):
        from .search_space import build_search_space

        # A config with an open choice (a table entry tuned before it existed) joins the space as the family runs it.
        return build_search_space(spec, shape, multiprocessors, [self.resolved_config(c, spec) for c in include])

    def resource_check(self, spec: AttentionSpec, config: PortableConfig, limits) -> ResourceCheck:
        from .resource_model import estimate_resources  # sympy: loaded only when tuning

        estimate = estimate_resources(spec, config)
        return ResourceCheck(estimate.worst_excess(limits), estimate.describe(limits),
                             {"shared_bytes": estimate.shared_bytes, "registers": round(estimate.registers_per_thread)})


PORTABLE = PortableFamily()

__all__ = ["PORTABLE", "PortableConfig", "PortableFamily"]

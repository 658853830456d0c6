"""The Hopper latent kernel for MLA/GLA decode, written in Gluon (templates/latent_hopper/): key blocks arrive by
TMA; two warpgroups share a 64-row tile's accumulator by dims (warp-specialised: one scores whole blocks and
runs the softmax, or the two take turns on every other block; or both scoring half of each block's keys), or split
a 128-row tile by rows (its warpgroups in step, or warp-specialised and taking turns: ping-pong); or a program of
one warpgroup owns 64 rows and two programs share an SM (GLA: latents up to 256 wide, where two key stages fit).
sm_90 GPUs only; support.py says which calls it takes."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from ...spec import AttentionSpec, ProblemShape
from ..common.tiles import rope_tile_width
from ..family import KernelCall, KernelFamily, ResourceCheck, open_choices
from .config import (BLOCK_N, ROW_SPLIT_MAX_WIDTH, WIDE_BLOCK_N, LatentHopperConfig, LatentHopperTile, heuristic_config,
                     programs_per_split)
from .launch import LatentHopperLaunchPlan
from .support import device_problem, layout_problem, spec_problem


class LatentHopperFamily(KernelFamily):
    name = "latent_hopper"
    config_type = LatentHopperConfig
    launches_into_buffers = True

    def supports(self, spec: AttentionSpec, shape: ProblemShape, call: KernelCall) -> Optional[str]:
        if call.softcap or call.alibi_slopes is not None:
            return "softcap and ALiBi are not in the latent kernel (no latent model uses them)"
        return (self.spec_problem(spec, shape, call.q.device)
                or layout_problem(call.q, call.q_rope, call.k_cache, call.k_rope_cache, spec, shape))

    def spec_problem(self, spec: AttentionSpec, shape: ProblemShape, device: torch.device) -> Optional[str]:
        return spec_problem(spec, shape) or device_problem(device)  # the head layout first: no device query

    def heuristic_config(self, spec: AttentionSpec, shape: ProblemShape, multiprocessors: int,
                         card: str = "") -> LatentHopperConfig:
        return heuristic_config(spec, shape, multiprocessors, card)

    def config_problem(self, config, spec: AttentionSpec) -> Optional[str]:
        return super().config_problem(config, spec) or config.problem_with(spec)

    def programs_per_split(self, spec: AttentionSpec, shape: ProblemShape, config: LatentHopperConfig) -> int:
        return programs_per_split(spec, shape, config.row_split, config.one_warpgroup)

    def longest_useful_splits(self, spec: AttentionSpec, shape: ProblemShape, config: LatentHopperConfig) -> int:
        return max(1, shape.capacity // config.tile_for(spec, 0).block_n)

    def resolved_config(self, config: LatentHopperConfig, spec: AttentionSpec) -> LatentHopperConfig:
        tile = config.tile_for(spec, 0)
        return dataclasses.replace(config, block_n=tile.block_n, warp_specialized=tile.warp_specialized,
                                   alternating=tile.alternating, lazy_rescale=tile.lazy_rescale)

    def prepare(self, call: KernelCall, spec: AttentionSpec, shape: ProblemShape, config: LatentHopperConfig):
        return LatentHopperLaunchPlan(call, spec, shape, config)

    def kernels_version(self) -> str:
        from .render import latent_hopper_kernels_version

        return latent_hopper_kernels_version()

    def variant_versions(self) -> dict:
        from .render import (LAZY_RESCALE_VARIANT, PING_PONG_VARIANT, lazy_rescale_kernels_version,
                             ping_pong_kernels_version)

        return {f"{self.name}+{LAZY_RESCALE_VARIANT}": lazy_rescale_kernels_version(),
                f"{self.name}+{PING_PONG_VARIANT}": ping_pong_kernels_version()}

    def config_variants(self, config: LatentHopperConfig, spec: AttentionSpec) -> tuple:
        """The ping-pong tile's template is a variant of its own (its version covers its lazy rescale too); the lazy
        rescale of the other row-owned tiles another."""
        from .render import LAZY_RESCALE_VARIANT, PING_PONG_VARIANT

        tile = config.tile_for(spec, 0)
        if tile.ping_pong:
            return (f"{self.name}+{PING_PONG_VARIANT}",)
        return (f"{self.name}+{LAZY_RESCALE_VARIANT}",) if tile.lazy_rescale else ()

    def search_space(self, spec: AttentionSpec, shape: ProblemShape, multiprocessors: int,
                     include: Sequence[LatentHopperConfig] = ()):
        """Split counts, the tiles where the latent fits one warpgroup's accumulator (128 rows, or 64 on one
        warpgroup), the shared 64-row tile's forms (the warp-specialised one with either schedule), and the block
        size (configs whose blocks or tile do not fit, or whose forms do not go together, are pruned by
        resource_check)."""
        from ..common.search_space import include_configs, split_choices

        # A config with open choices (a table's entry tuned before they existed) joins the space as the family runs it.
        include = [self.resolved_config(config, spec) if open_choices(config) else config for config in include]
        narrow = spec.head_dim_k <= ROW_SPLIT_MAX_WIDTH
        row_split = [False] + ([True] if narrow else [])
        widest = LatentHopperTile(row_split[-1]).block_m
        block_n = [BLOCK_N] + ([WIDE_BLOCK_N] if narrow else [])
        return include_configs({"num_splits": split_choices(spec, shape, multiprocessors, widest),
                                "row_split": row_split, "block_n": block_n,
                                "one_warpgroup": [False] + ([True] if narrow else []),
                                "warp_specialized": [False, True], "alternating": [False, True],
                                "lazy_rescale": [False] + ([True] if narrow else [])}, include)

    def resource_check(self, spec: AttentionSpec, config: LatentHopperConfig, limits) -> ResourceCheck:
        # The tile's stages are sized from the shared memory the template leaves (LatentHopperTile.num_stages).
        problem = config.problem_with(spec)
        if problem:
            return ResourceCheck(1.0, problem, {})
        tile = config.tile_for(spec, 0)
        stages = tile.num_stages(spec.head_dim_k, rope_tile_width(spec.rope_dim))
        programs = (", one warpgroup, two programs an SM" if tile.one_warpgroup
                    else ", warp-specialised, ping-pong" if tile.ping_pong
                    else ", warp-specialised, alternating" if tile.alternating
                    else ", warp-specialised" if tile.warp_specialized else "")
        programs += ", lazy rescale" if tile.lazy_rescale else ""
        return ResourceCheck(0.0, f"{tile.block_m}-row tile{programs}, {tile.block_n}-key blocks, {stages} stages",
                             {"stages": stages})


LATENT_HOPPER = LatentHopperFamily()

__all__ = ["LATENT_HOPPER", "LatentHopperConfig", "LatentHopperFamily", "LatentHopperTile"]

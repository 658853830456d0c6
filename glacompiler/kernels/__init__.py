"""Kernel families and the registry the op picks from.

The op runs a call on the first family in FAMILIES that supports it (`KernelFamily.supports` returns None):
the Hopper latent kernel where it applies, else the portable split-KV kernels, which take every head layout.
Everything under the families is in kernels/common/ (see its docstring)."""
from __future__ import annotations

from typing import Optional

import torch

from ..spec import AttentionSpec, ProblemShape
from .family import KernelCall, KernelFamily
from .latent_hopper import LATENT_HOPPER
from .portable import PORTABLE

FAMILIES: tuple[KernelFamily, ...] = (LATENT_HOPPER, PORTABLE)
PORTABLE_FAMILY_NAME = PORTABLE.name  # the family that runs every call the op validates


def family_named(name: str) -> KernelFamily:
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ValueError(f"unknown kernel family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


def family_of_config(config) -> KernelFamily:
    for family in FAMILIES:
        if isinstance(config, family.config_type):
            return family
    raise TypeError(f"config must be one of {', '.join(f.config_type.__name__ for f in FAMILIES)}, "
                    f"got {type(config).__name__}")


def choose_family(spec: AttentionSpec, shape: ProblemShape, call: KernelCall,
                  in_graph_only: bool = False) -> Optional[KernelFamily]:
    """The first family that runs this call, or None (CPU tensors outside the interpreter). in_graph_only: the
    first of those whose kernels a compiled graph can launch itself (KernelFamily.launches_in_graph)."""
    for family in FAMILIES:
        if (family.launches_in_graph or not in_graph_only) and family.supports(spec, shape, call) is None:
            return family
    return None


def family_for_spec(spec: AttentionSpec, shape: ProblemShape, device: torch.device) -> Optional[KernelFamily]:
    """The family that would run calls of this layout and shape on `device` with well-laid-out tensors (what the
    tuner tunes), or None (CPU tensors outside the interpreter)."""
    for family in FAMILIES:
        if family.spec_problem(spec, shape, device) is None:
            return family
    return None


def family_reasons(spec: AttentionSpec, shape: ProblemShape, call: KernelCall) -> dict:
    """Per family, why it does not run this call (None for those that do): what a report or a test shows."""
    return {family.name: family.supports(spec, shape, call) for family in FAMILIES}


__all__ = ["FAMILIES", "PORTABLE_FAMILY_NAME", "KernelCall", "KernelFamily", "choose_family", "family_for_spec",
           "family_named", "family_of_config", "family_reasons"]

"""Runtime config lookup: user cache, then the shipped table for this GPU, then None (heuristic)."""
from __future__ import annotations

from typing import Optional

import torch

from ..config import KernelConfig
from ..spec import AttentionSpec
from ..validation import ProblemShape


def lookup_config(spec: AttentionSpec, shape: ProblemShape, device: torch.device) -> Optional[KernelConfig]:
    if device.type != "cuda":
        return None
    return None

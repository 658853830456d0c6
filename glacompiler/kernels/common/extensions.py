"""FlashAttention's extensions (softcap, ALiBi, sinks, sliding window) as every family's kernel takes them: the
scalars and the constexpr flags, so that a kernel compiles the code of the features in use and nothing else (the
launch plans pass a placeholder tensor for an absent operand: its flag is off and the kernel never reads it).
Their meanings are glacompiler.reference's."""
from __future__ import annotations

import dataclasses
from typing import Optional

from torch import Tensor

from .log2_domain import log2_scale

# An unlimited side of the window, as the kernels take it: farther than any key from any query, yet far from
# int32's end (positions are added to it). A constant, so that the launch specialisation does not follow the
# capacity of a growing cache.
UNLIMITED_WINDOW = 2**30


@dataclasses.dataclass(frozen=True)
class KernelExtensions:
    qk_scale_log2: float  # what the scores are multiplied by (after the cap's tanh when softcap is on)
    softcap_scale: float  # softmax_scale / softcap: the tanh's argument is raw scores times it (1.0 when off)
    alibi_batch_stride: int  # 0 for [Hq] slopes
    window_left: int  # keys older than query_pos - window_left are not seen (UNLIMITED_WINDOW when unlimited)
    window_right: int  # keys past query_pos + window_right are not seen (UNLIMITED_WINDOW when unlimited)
    flags: dict  # HAS_SOFTCAP, HAS_ALIBI, HAS_SINKS, HAS_WINDOW

    @property
    def positions_matter(self) -> bool:
        """ALiBi and the window depend on the query's position: lengths must be the caller's (or the capacity)."""
        return self.flags["HAS_ALIBI"] or self.flags["HAS_WINDOW"]


def kernel_extensions(softmax_scale: float, softcap: float, alibi_slopes: Optional[Tensor], sinks: Optional[Tensor],
                      window_size: tuple) -> KernelExtensions:
    """The extension arguments of a call."""
    left, right = window_size
    if softcap > 0:
        # softcap * tanh(scale * s / softcap), in the log2 domain: tanh(s * (scale / softcap)) * softcap * log2(e).
        qk_scale, softcap_scale = log2_scale(softcap), softmax_scale / softcap
    else:
        qk_scale, softcap_scale = log2_scale(softmax_scale), 1.0
    return KernelExtensions(
        qk_scale_log2=qk_scale,
        softcap_scale=softcap_scale,
        alibi_batch_stride=0 if alibi_slopes is None or alibi_slopes.dim() == 1 else alibi_slopes.stride(0),
        window_left=UNLIMITED_WINDOW if left < 0 else min(left, UNLIMITED_WINDOW),
        window_right=UNLIMITED_WINDOW if right < 0 else min(right, UNLIMITED_WINDOW),
        flags=dict(HAS_SOFTCAP=softcap > 0, HAS_ALIBI=alibi_slopes is not None, HAS_SINKS=sinks is not None,
                   HAS_WINDOW=left >= 0 or right >= 0),
    )

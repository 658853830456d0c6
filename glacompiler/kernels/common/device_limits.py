"""What a GPU gives one program: shared memory, registers, L2 and multiprocessors (what tile choices and the
resource models are checked against)."""
from __future__ import annotations

import dataclasses
import functools

import torch


def cuda_index(device: torch.device) -> int:
    """A CUDA device's index: its own, or the current device's for a bare "cuda"."""
    return device.index if device.index is not None else torch.cuda.current_device()


@dataclasses.dataclass(frozen=True)
class DeviceLimits:
    name: str
    shared_bytes_per_block: int  # opt-in maximum of dynamic shared memory per program
    registers_per_block: int
    max_registers_per_thread: int
    l2_bytes: int
    multiprocessors: int

    @classmethod
    def for_device(cls, device: torch.device) -> "DeviceLimits":
        return _limits_for_index(cuda_index(device))


# Used when torch does not report a limit (older builds lack shared_memory_per_block_optin or
# regs_per_multiprocessor). Hopper: 227 KiB of shared memory per block, 64 Ki registers, 255 per thread;
# L2 50 MB on the H100 SXM, 60 MB on the H200 as PyTorch reports them.
FALLBACK_LIMITS = {
    "H100": dict(shared_bytes_per_block=232448, registers_per_block=65536, max_registers_per_thread=255,
                 l2_bytes=50 * 2**20, multiprocessors=132),
    "H200": dict(shared_bytes_per_block=232448, registers_per_block=65536, max_registers_per_thread=255,
                 l2_bytes=60 * 2**20, multiprocessors=132),
}
# Any other GPU without the attributes: the limits every CUDA GPU since Volta meets.
CONSERVATIVE_LIMITS = dict(shared_bytes_per_block=49152, registers_per_block=65536, max_registers_per_thread=255,
                           l2_bytes=4 * 2**20, multiprocessors=1)


def fallback_limits(name: str) -> dict:
    for key, limits in FALLBACK_LIMITS.items():
        if key in name:
            return dict(limits)
    return dict(CONSERVATIVE_LIMITS)


@functools.lru_cache(maxsize=None)
def _limits_for_index(index: int) -> DeviceLimits:
    props = torch.cuda.get_device_properties(index)
    fallback = fallback_limits(props.name)
    return DeviceLimits(
        name=props.name,
        shared_bytes_per_block=getattr(props, "shared_memory_per_block_optin", None) or fallback["shared_bytes_per_block"],
        registers_per_block=getattr(props, "regs_per_multiprocessor", None) or fallback["registers_per_block"],
        max_registers_per_thread=fallback["max_registers_per_thread"],
        l2_bytes=getattr(props, "L2_cache_size", None) or fallback["l2_bytes"],
        multiprocessors=props.multi_processor_count,
    )

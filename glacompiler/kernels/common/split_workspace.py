"""The split kernels' partial outputs and LSEs, held between eager calls: one fp32 workspace per (device, CUDA
stream), as FlashInfer's workspace buffer.

A split call's partials live from its split kernel to its combine, both on the caller's stream. Allocating them on
every call costs two trips through the caching allocator (about 5 us of host time a call). Held instead, they are
views of the stream's workspace, which grows to the largest call's partials and is never freed while calls run: so
a later call on that stream, whatever its shapes, writes them only after the earlier call's combine has read them
(stream order), and no other stream's allocation is ever handed their memory. Each stream has its own, so calls on
two streams never share partials.

Calls that must not hold them get fresh ones (SplitBuffers.allocate_for_call decides): a call being captured into a
CUDA graph (the graph keeps its own allocations from its private pool, which replays may write while eager calls
run), a launch traced into a compiled graph (fake tensors), and calls off CUDA."""
from __future__ import annotations

import torch
from torch import Tensor

# Where the second view starts, rounded up to this many fp32 elements (512 bytes, the caching allocator's own
# alignment): the kernels' binaries are specialised on 16-byte alignment, which a fresh allocation always has.
VIEW_ALIGNMENT = 128
# A workspace's views by shapes: the distinct split shapes a process calls are few (one per call site and batch
# size); past this many the dict is emptied (views only: the memory is the workspace's).
MAX_VIEWS_PER_WORKSPACE = 256


class _Workspace:
    __slots__ = ("buffer", "views")

    def __init__(self, buffer: Tensor):
        self.buffer = buffer
        self.views: dict = {}


# (device index, raw CUDA stream) -> _Workspace
_workspaces: dict = {}


def _aligned(elements: int) -> int:
    return -(-elements // VIEW_ALIGNMENT) * VIEW_ALIGNMENT


def held_partials(q: Tensor, stream_key: tuple, shapes: tuple) -> tuple:
    """(split_out, split_lse) of shapes (split_out's, split_lse's), contiguous fp32 views of stream_key's workspace
    (made, or grown, on q's device and the current stream where too small). Any two calls' views on one stream may
    overlap: the caller must be that stream's, and must have finished with the last call's partials in stream order
    (its combine launched)."""
    workspace = _workspaces.get(stream_key)
    if workspace is not None:
        views = workspace.views.get(shapes)
        if views is not None:
            return views
    split_out_shape, split_lse_shape = shapes
    out_elements = _aligned(_elements(split_out_shape))
    needed = out_elements + _elements(split_lse_shape)
    if workspace is None or workspace.buffer.numel() < needed:
        # The old buffer goes back to the caching allocator on this stream, whose later allocations are ordered
        # after the work already queued on it.
        workspace = _workspaces[stream_key] = _Workspace(q.new_empty(needed, dtype=torch.float32))
    elif len(workspace.views) >= MAX_VIEWS_PER_WORKSPACE:
        workspace.views.clear()
    buffer = workspace.buffer
    views = (buffer[:_elements(split_out_shape)].view(split_out_shape),
             buffer[out_elements:out_elements + _elements(split_lse_shape)].view(split_lse_shape))
    workspace.views[shapes] = views
    return views


def _elements(shape: tuple) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


def split_workspace_bytes() -> dict:
    """Bytes held per (device index, raw stream): what a process's split calls keep between calls."""
    return {key: workspace.buffer.numel() * workspace.buffer.element_size() for key, workspace in _workspaces.items()}


def release_split_workspaces() -> None:
    """Drop every held workspace (their memory returns to PyTorch's caching allocator once no queued call needs it:
    the allocator orders its reuse on the stream after the work queued there). The next split call makes a new one."""
    _workspaces.clear()

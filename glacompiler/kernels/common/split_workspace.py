"""What an eager call writes but does not return, held between a thread's calls: one fp32 workspace per (thread,
device, CUDA stream). That is a split call's partial outputs and LSEs, and the LSE the wrapper drops without
return_lse.

A split call's partials live from its split kernel to its combine, both on the caller's stream; a dropped LSE is
written and never read. Allocating them on every call costs a trip through the caching allocator each (2.5-4 us of
host time). Held instead, they are views of the stream's workspace, which grows to the largest call's and is kept. A
later call of the same thread on that stream, whatever its shapes, launches its split kernel after the earlier
call's combine, so the stream runs them in that order. A workspace that grows goes back to the caching allocator,
which hands that memory out again only to allocations on the same stream, ordered after the work already queued
there. Each thread has its own (another thread's launches can come between a call's two launches on a shared
stream), and each stream its own.

Only the eager wrapper's direct path holds them (SplitBuffers.allocate_for_call): an eager call from user code.
Every other call allocates: a call captured into a CUDA graph (the graph keeps its own allocations, which replays
write while eager calls run), one through the dispatcher (it may run inside a compiled graph, whose CUDA graph tree
routes allocations to its private pool while it warms up), the tuner's (through the dispatcher's prepared calls),
a launch traced into a compiled graph (fake tensors), and calls off CUDA. Not caught: the wrapper called from
inside another op's kernel, or under torch.cuda.use_mem_pool, where allocations go to a private or user pool; a
workspace made or grown there stays in that pool (as the plans' first-call tensors would). Such code should call
torch.ops.glacompiler.attention_with_kvcache, which holds nothing."""
from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

# Where each view after the first starts, rounded up to this many fp32 elements (512 bytes, the caching allocator's own
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


# .workspaces: (device index, raw CUDA stream) -> _Workspace, per thread (freed when the thread ends). A stream is
# known by its handle: a stream destroyed and another made with the same handle share an entry, which is safe (the
# new stream's calls are ordered among themselves) but keeps the old one's memory.
_per_thread = threading.local()


def _workspaces() -> dict:
    workspaces = getattr(_per_thread, "workspaces", None)
    if workspaces is None:
        workspaces = _per_thread.workspaces = {}
    return workspaces


def _aligned(elements: int) -> int:
    return -(-elements // VIEW_ALIGNMENT) * VIEW_ALIGNMENT


def held_views(q: Tensor, stream_key: tuple, shapes: tuple) -> tuple:
    """One contiguous fp32 view per shape in shapes, one after another in this thread's workspace for stream_key
    (made, or grown, on q's device and the current stream where too small). Any two calls' views on one stream may
    overlap: the caller must be that stream's, must have launched the last call's combine, and must return none of
    them."""
    workspaces = _workspaces()
    workspace = workspaces.get(stream_key)
    if workspace is not None:
        views = workspace.views.get(shapes)
        if views is not None:
            return views
    counts = [math.prod(shape) for shape in shapes]
    starts = [0]
    for count in counts:
        starts.append(starts[-1] + _aligned(count))
    needed = starts[-1]
    if workspace is None or workspace.buffer.numel() < needed:
        workspace = workspaces[stream_key] = _Workspace(q.new_empty(needed, dtype=torch.float32))
    elif len(workspace.views) >= MAX_VIEWS_PER_WORKSPACE:
        workspace.views.clear()
    buffer = workspace.buffer
    views = tuple(buffer[start:start + count].view(shape) for start, count, shape in zip(starts, counts, shapes))
    workspace.views[shapes] = views
    return views


def split_workspace_bytes() -> dict:
    """Bytes this thread's split calls hold between calls, per (device index, raw stream)."""
    return {key: workspace.buffer.numel() * workspace.buffer.element_size() for key, workspace in _workspaces().items()}


def release_split_workspaces() -> None:
    """Drop this thread's workspaces (their memory goes back to PyTorch's caching allocator, which reuses it on each
    stream after the work queued there). The thread's next split call makes a new one."""
    _workspaces().clear()

"""Index algebra over chains of view-like ATen ops.

A Layout says, for a tensor X that is a view (in value terms) of a base tensor Y, which element of Y each
element of X holds. Every dim of X is a product of Pieces, major to minor; a Piece is a run of indices
along one axis of Y (with a step), or a broadcast run (axis None) along which X repeats. Dims of size 1
hold no pieces. Clones are transparent: values are what matter, not memory.

With this, a matmul written as expand/view/bmm/view, an einsum lowered to permute/bmm, HF repeat_kv
(expand + reshape) and repeat_interleave all reduce to the same question: which base axis feeds which
index of the scores, checked exactly instead of pattern by pattern."""
from __future__ import annotations

import dataclasses
import operator
from typing import Callable, Optional, Sequence

import torch
from torch import fx

from .sizes import Size, divides, exact_div, is_concrete, known_equal, known_less, known_one, product

aten = torch.ops.aten


@dataclasses.dataclass(frozen=True)
class Piece:
    axis: Optional[int]  # axis of the base; None for a broadcast run
    size: Size
    step: Size = 1  # index step along the base axis per unit of this piece

    def sub(self, step: Size, size: Size) -> "Piece":
        """The run of this piece at the given step (in units of this piece) and length."""
        if self.axis is None:
            return Piece(None, size)
        return Piece(self.axis, size, self.step * step if not known_one(step) else self.step)


Dim = tuple  # tuple[Piece, ...]


@dataclasses.dataclass(frozen=True)
class Layout:
    dims: tuple  # tuple[Dim, ...]
    base_sizes: tuple  # sizes of the base axes

    @property
    def rank(self) -> int:
        return len(self.dims)

    def pieces(self) -> list:
        return [piece for dim in self.dims for piece in dim]

    def dim_size(self, index: int) -> Size:
        return product(piece.size for piece in self.dims[index])


def identity(sizes: Sequence[Size]) -> Layout:
    dims = tuple(() if known_one(size) else (Piece(axis, size),) for axis, size in enumerate(sizes))
    return Layout(dims, tuple(sizes))


def merge_adjacent(pieces: Sequence[Piece]) -> tuple:
    """Fuse neighbouring pieces that form one contiguous run of the same axis (or both broadcast)."""
    merged: list[Piece] = []
    for piece in pieces:
        if merged:
            major = merged[-1]
            if major.axis is None and piece.axis is None:
                merged[-1] = Piece(None, major.size * piece.size)
                continue
            if (
                major.axis is not None
                and major.axis == piece.axis
                and known_equal(major.step, piece.step * piece.size)
            ):
                merged[-1] = Piece(piece.axis, major.size * piece.size, piece.step)
                continue
        merged.append(piece)
    return tuple(merged)


def split_piece(piece: Piece, minor_size: Size) -> tuple[Piece, Piece]:
    """Split a piece into (major, minor) with the minor part of minor_size."""
    major_size = exact_div(piece.size, minor_size)
    if piece.axis is None:
        return Piece(None, major_size), Piece(None, minor_size)
    return Piece(piece.axis, major_size, piece.step * minor_size), Piece(piece.axis, minor_size, piece.step)


def regroup(pieces: Sequence[Piece], sizes: Sequence[Size]) -> Optional[tuple]:
    """Distribute a major-to-minor sequence of pieces over the dims of a new shape (what a view does).
    None when the sizes do not line up exactly."""
    queue = list(pieces)
    dims = []
    for size in sizes:
        if known_one(size):
            dims.append(())
            continue
        taken: list[Piece] = []
        remaining = size
        while not known_one(remaining):
            if not queue:
                return None
            piece = queue.pop(0)
            if known_equal(piece.size, remaining):
                taken.append(piece)
                remaining = 1
            elif divides(piece.size, remaining):
                taken.append(piece)
                remaining = exact_div(remaining, piece.size)
            elif divides(remaining, piece.size):
                major, minor = split_piece(piece, exact_div(piece.size, remaining))
                taken.append(major)
                queue.insert(0, minor)
                remaining = 1
            else:
                return None
        dims.append(tuple(taken))
    if queue:
        return None
    return tuple(dims)


def resolve_run(dim: Sequence[Piece], step: Size, size: Size) -> Optional[list]:
    """Pieces (over the inner base) covering the indices step * t, t in [0, size), of a composite dim."""
    pieces = list(dim)
    # Skip the minor pieces that the step jumps over.
    remaining_step = step
    while not known_one(remaining_step):
        if not pieces:
            return None
        minor = pieces.pop()
        if divides(minor.size, remaining_step):
            remaining_step = exact_div(remaining_step, minor.size)
        elif divides(remaining_step, minor.size):
            major, _ = split_piece(minor, remaining_step)
            pieces.append(major)
            remaining_step = 1
        else:
            return None
    taken: list[Piece] = []
    remaining = size
    while not known_one(remaining):
        if not pieces:
            return None
        minor = pieces.pop()
        if known_equal(minor.size, remaining):
            taken.insert(0, minor)
            remaining = 1
        elif divides(minor.size, remaining):
            taken.insert(0, minor)
            remaining = exact_div(remaining, minor.size)
        elif divides(remaining, minor.size):
            _, run = split_piece(minor, remaining)
            taken.insert(0, run)
            remaining = 1
        elif not pieces and known_less(remaining, minor.size):
            # The outermost piece: its first `remaining` indices (a prefix slice, e.g. probabilities with
            # the sink column dropped, read through a cast) are a shorter piece.
            taken.insert(0, minor.sub(1, remaining))
            remaining = 1
        else:
            return None
    return taken


def compose(outer: Layout, inner: Layout) -> Optional[Layout]:
    """outer maps X onto Y, inner maps Y onto Z: the layout of X over Z."""
    dims = []
    for dim in outer.dims:
        pieces: list[Piece] = []
        for piece in dim:
            if piece.axis is None:
                pieces.append(piece)
                continue
            run = resolve_run(inner.dims[piece.axis], piece.step, piece.size)
            if run is None:
                return None
            pieces.extend(run)
        dims.append(merge_adjacent(pieces))
    return Layout(tuple(dims), inner.base_sizes)


# ---------------------------------------------------------------------------------------------------------
# View-like ops: each handler maps the layout of the op's input to the layout of its output (or None when
# the op is not a pure re-indexing in this instance, e.g. a slice that drops elements).


def fake_value(node) -> Optional[torch.Tensor]:
    """The fake tensor AOT recorded for a node (its shape, strides and dtype), or None."""
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value if isinstance(value, torch.Tensor) else None


def _normalize_dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def _permute(node: fx.Node, layout: Layout) -> Optional[Layout]:
    order = [_normalize_dim(d, layout.rank) for d in node.args[1]]
    return Layout(tuple(layout.dims[d] for d in order), layout.base_sizes)


def _transpose(node: fx.Node, layout: Layout) -> Optional[Layout]:
    a, b = (_normalize_dim(d, layout.rank) for d in node.args[1:3])
    dims = list(layout.dims)
    dims[a], dims[b] = dims[b], dims[a]
    return Layout(tuple(dims), layout.base_sizes)


def _t(node: fx.Node, layout: Layout) -> Optional[Layout]:
    return Layout(tuple(reversed(layout.dims)), layout.base_sizes)


def _unsqueeze(node: fx.Node, layout: Layout) -> Optional[Layout]:
    dim = _normalize_dim(node.args[1], layout.rank + 1)
    dims = list(layout.dims)
    dims.insert(dim, ())
    return Layout(tuple(dims), layout.base_sizes)


def _squeeze(node: fx.Node, layout: Layout) -> Optional[Layout]:
    if len(node.args) < 2:
        targets = set(range(layout.rank))
    else:
        arg = node.args[1]
        targets = {_normalize_dim(d, layout.rank) for d in (arg if isinstance(arg, (list, tuple)) else [arg])}
    dims = tuple(dim for index, dim in enumerate(layout.dims) if not (index in targets and not dim))
    return Layout(dims, layout.base_sizes)


def _expand(node: fx.Node, layout: Layout) -> Optional[Layout]:
    out = fake_value(node)
    if out is None:
        return None
    new_rank = out.dim()
    lead = new_rank - layout.rank
    dims = []
    for index, size in enumerate(out.shape):
        source = index - lead
        old = layout.dims[source] if source >= 0 else ()
        if old or known_one(size):
            dims.append(old)
        else:
            dims.append((Piece(None, size),))
    return Layout(tuple(dims), layout.base_sizes)


def _view(node: fx.Node, layout: Layout) -> Optional[Layout]:
    out = fake_value(node)
    if out is None:
        return None
    dims = regroup(layout.pieces(), list(out.shape))
    if dims is None:
        return None
    return Layout(tuple(merge_adjacent(dim) for dim in dims), layout.base_sizes)


def _same(node: fx.Node, layout: Layout) -> Optional[Layout]:
    return layout


def prefix_of_dim(dim: Sequence[Piece], length: Size) -> Optional[tuple]:
    """The pieces of a dim's first `length` indices: the minor pieces whole, then a prefix of one piece; the
    pieces above it are read at index 0 only (and drop out). None when that prefix is no such product (the
    first 6 of a [2, 4] dim)."""
    kept: list[Piece] = []
    remaining = length
    for piece in reversed(dim):
        if known_one(remaining):
            break
        if divides(piece.size, remaining):
            kept.insert(0, piece)
            remaining = exact_div(remaining, piece.size)
        elif known_less(remaining, piece.size):
            kept.insert(0, piece.sub(1, remaining))
            remaining = 1
        else:
            return None
    return tuple(kept) if known_one(remaining) else None


def _with_prefix(layout: Layout, dim: int, length: Size) -> Optional[Layout]:
    kept = prefix_of_dim(layout.dims[dim], length)
    if kept is None:
        return None
    return Layout(layout.dims[:dim] + (kept,) + layout.dims[dim + 1:], layout.base_sizes)


def _prefix_slice(node: fx.Node, layout: Layout) -> Optional[Layout]:
    """A slice that keeps the first n entries of a dim (narrow, x[..., :n], split's first part) is a pure
    re-indexing, even of a dim made of several runs (the query part of a fused QKV projection viewed as
    [.., 3, H, D]). A slice with an offset or a step starts a new base: layouts have no offsets."""
    source, out = fake_value(node.args[0]), fake_value(node)
    if source is None or out is None:
        return None
    dim = _normalize_dim(node.args[1] if len(node.args) > 1 else 0, layout.rank)
    start = node.args[2] if len(node.args) > 2 else 0
    step = node.args[4] if len(node.args) > 4 else 1
    if step != 1:
        return None
    if known_equal(source.shape[dim], out.shape[dim]):
        return layout
    if start not in (0, None):
        return None
    return _with_prefix(layout, dim, out.shape[dim])


def _select(node: fx.Node, layout: Layout) -> Optional[Layout]:
    """select(dim, 0) reads that dim's pieces at index 0 only: they drop out (unbind's first part too).
    Another index is an offset: a new base."""
    dim = _normalize_dim(node.args[1], layout.rank)
    index = node.args[2]
    if not isinstance(index, int):
        return None
    if index < 0:
        size = layout.dim_size(dim)
        if not is_concrete(size):
            return None
        index += size
    if index != 0:
        return None
    return Layout(layout.dims[:dim] + layout.dims[dim + 1:], layout.base_sizes)


VIEW_OPS: dict[object, Callable[[fx.Node, Layout], Optional[Layout]]] = {
    aten.view.default: _view,
    aten._unsafe_view.default: _view,
    aten.reshape.default: _view,
    aten.permute.default: _permute,
    aten.transpose.int: _transpose,
    aten.t.default: _t,
    aten.unsqueeze.default: _unsqueeze,
    aten.squeeze.default: _squeeze,
    aten.squeeze.dim: _squeeze,
    aten.squeeze.dims: _squeeze,
    aten.expand.default: _expand,
    aten.clone.default: _same,
    aten.alias.default: _same,
    aten.slice.Tensor: _prefix_slice,
    aten.select.int: _select,
}

SPLIT_OPS = (aten.split.Tensor, aten.split_with_sizes.default, aten.unbind.int)


def _first_part(node: fx.Node, layout: Layout) -> Optional[Layout]:
    """getitem(split(x, .., dim), 0) is x's prefix along dim; getitem(unbind(x, dim), 0) is x.select(dim, 0).
    Other parts start at an offset: new bases."""
    split, index = node.args[:2]
    out = fake_value(node)
    if index != 0 or out is None:
        return None
    rank = layout.rank
    if split.target is aten.unbind.int:
        dim = _normalize_dim(split.args[1] if len(split.args) > 1 else split.kwargs.get("dim", 0), rank)
        return Layout(layout.dims[:dim] + layout.dims[dim + 1:], layout.base_sizes)
    dim = _normalize_dim(split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0), rank)
    return _with_prefix(layout, dim, out.shape[dim])


def _is_split_part(node) -> bool:
    return (isinstance(node, fx.Node) and node.op == "call_function" and node.target is operator.getitem
            and isinstance(node.args[0], fx.Node) and node.args[0].op == "call_function"
            and node.args[0].target in SPLIT_OPS)


def _view_step(node: fx.Node, layout: Layout) -> Optional[Layout]:
    if _is_split_part(node):
        return _first_part(node, layout)
    return VIEW_OPS[node.target](node, layout)


def view_input(node: fx.Node):
    """The tensor a view-like node (or a part of a split) reads."""
    return node.args[0].args[0] if _is_split_part(node) else node.args[0]


def is_view_like(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in VIEW_OPS


@dataclasses.dataclass
class Traced:
    """node == base viewed through `chain` (oldest first); layout maps node onto base."""

    base: fx.Node
    layout: Layout
    chain: list  # the view nodes between base (exclusive) and node (inclusive)


def trace(node: fx.Node) -> Optional[Traced]:
    """Follow view-like ops back from node to the first op that is not a pure re-indexing."""
    chain = []
    current = node
    while is_view_like(current) or _is_split_part(current):
        source = view_input(current)
        if not isinstance(source, fx.Node) or fake_value(source) is None:
            break
        chain.append(current)
        current = source
    chain.reverse()
    base_val = fake_value(current)
    if base_val is None:
        return None
    layout = identity(list(base_val.shape))
    applied = []
    for view_node in chain:
        step = _view_step(view_node, layout)
        if step is None:
            # Not a pure re-indexing here: the tensor it produces becomes the base.
            base_val = fake_value(view_node)
            layout = identity(list(base_val.shape))
            applied = []
            current = view_node
            continue
        layout = step
        applied.append(view_node)
    return Traced(current, layout, applied)


def broadcast_layout(source_shape: Sequence[Size], target_shape: Sequence[Size]) -> Optional[Layout]:
    """Layout of `source` broadcast to `target` (numpy rules), over source's axes."""
    lead = len(target_shape) - len(source_shape)
    if lead < 0:
        return None
    dims = []
    for index, size in enumerate(target_shape):
        source = index - lead
        if source < 0 or known_one(source_shape[source]):
            dims.append(() if known_one(size) else (Piece(None, size),))
        elif known_equal(source_shape[source], size):
            dims.append((Piece(source, size),))
        else:
            return None
    return Layout(tuple(dims), tuple(source_shape))


def view_layout(source_shape: Sequence[Size], target_shape: Sequence[Size]) -> Optional[Layout]:
    """Layout of source.view(target_shape) over source's axes."""
    dims = regroup(identity(source_shape).pieces(), target_shape)
    if dims is None:
        return None
    return Layout(tuple(merge_adjacent(dim) for dim in dims), tuple(source_shape))

"""Batched products (bmm, mm, and SDPA's implied products) as index maps.

A product out[b, m, n] = sum_k A[b, m, k] * B[b, k, n] is described by "atoms": runs of the output index
space, each tied to a run of A's base (or nothing, where A is broadcast or absent) and a run of B's base.
Batch atoms pair both sides; m atoms are A-only, n atoms B-only; contraction atoms pair A and B."""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from .layout import Layout, Piece, split_piece
from .sizes import Size, divides, exact_div, known_equal


@dataclasses.dataclass(frozen=True)
class Atom:
    left: Optional[Piece]  # run of A's base, None where A does not vary
    right: Optional[Piece]  # run of B's base, None where B does not vary
    size: Size

    def sub(self, step: Size, size: Size) -> "Atom":
        return Atom(
            None if self.left is None else self.left.sub(step, size),
            None if self.right is None else self.right.sub(step, size),
            size,
        )


def _real(piece: Optional[Piece]) -> Optional[Piece]:
    return None if piece is None or piece.axis is None else piece


def align(left: Sequence[Piece], right: Sequence[Piece]) -> Optional[list]:
    """Pair two major-to-minor piece sequences over the same index range, splitting where they differ."""
    left, right = list(left), list(right)
    atoms = []
    while left and right:
        a, b = left.pop(0), right.pop(0)
        if known_equal(a.size, b.size):
            atoms.append(Atom(_real(a), _real(b), a.size))
        elif divides(b.size, a.size):
            major, minor = split_piece(a, exact_div(a.size, b.size))
            atoms.append(Atom(_real(major), _real(b), b.size))
            left.insert(0, minor)
        elif divides(a.size, b.size):
            major, minor = split_piece(b, exact_div(b.size, a.size))
            atoms.append(Atom(_real(a), _real(major), a.size))
            right.insert(0, minor)
        else:
            return None
    if left or right:
        return None
    return atoms


@dataclasses.dataclass
class ProductAtoms:
    """out dims: (batch atoms, m atoms, n atoms); contraction pairs A and B over the summed index."""

    batch: list
    rows: list
    cols: list
    contraction: list

    @property
    def output_atoms(self) -> list:
        return self.batch + self.rows + self.cols

    def output_layout(self) -> Layout:
        """Layout of the product's output over the atom space (one axis per atom)."""
        dims = []
        axis = 0
        for group in (self.batch, self.rows, self.cols):
            pieces = []
            for atom in group:
                pieces.append(Piece(axis, atom.size))
                axis += 1
            dims.append(tuple(pieces))
        return Layout(tuple(dims), tuple(atom.size for atom in self.output_atoms))


def product_atoms(batch_left: Sequence[Piece], rows: Sequence[Piece], contract_left: Sequence[Piece],
                  batch_right: Sequence[Piece], contract_right: Sequence[Piece],
                  cols: Sequence[Piece]) -> Optional[ProductAtoms]:
    batch = align(batch_left, batch_right)
    contraction = align(contract_left, contract_right)
    if batch is None or contraction is None:
        return None
    return ProductAtoms(
        batch=batch,
        rows=[Atom(_real(piece), None, piece.size) for piece in rows],
        cols=[Atom(None, _real(piece), piece.size) for piece in cols],
        contraction=contraction,
    )


def bmm_atoms(left: Layout, right: Layout) -> Optional[ProductAtoms]:
    """left: [b, m, k] (or [m, k] for mm), right: [b, k, n] (or [k, n])."""
    if left.rank == 3 and right.rank == 3:
        return product_atoms(left.dims[0], left.dims[1], left.dims[2], right.dims[0], right.dims[1], right.dims[2])
    if left.rank == 2 and right.rank == 2:
        return product_atoms((), left.dims[0], left.dims[1], (), right.dims[0], right.dims[1])
    return None

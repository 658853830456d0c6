"""A part of K or V that is a per-head linear map of one tensor (the latent): K[b, s, h, d] =
sum_c L[b, s, g(h), c] * W[h, d, c], computed by a product (mm / bmm) whose one side varies with the batch and
key position (the latent) and whose other side does not (the weights).

The op tensor's dims are [batch, key, KV head, head dim]; each is followed onto the product's atoms
(trace/products.py). What each dim may read:

| op dim    | latent side          | weight side                                            |
|-----------|----------------------|--------------------------------------------------------|
| batch     | yes                  | no (a map that changes per sequence is not a weight)   |
| key       | yes                  | no                                                     |
| KV head   | latent heads (major) | the head's own map (W_UK_h)                            |
| head dim  | no                   | yes                                                    |
| summed c  | one run              | the matching runs                                      |
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from torch import fx

from ..decline import Decline
from ..trace.layout import Layout, Piece, fake_value, merge_adjacent
from ..trace.operands import is_call, walk_operand
from ..trace.products import bmm_atoms
from ..trace.score_side import PRODUCT_OPS
from .locate import Located, compose_located

BATCH, KEY, HEAD, DIM = range(4)


@dataclasses.dataclass
class LinearMap:
    """An op tensor [B, S, Hkv, D] = latent [B, S, G, c] mapped per KV head by weight [Hkv, D, c]."""

    latent: fx.Node
    latent_runs: list  # per latent op dim (batch, key, latent heads, c): runs of the latent's axes
    weight: fx.Node
    weight_runs: list  # per weight dim (KV head, head dim, c): runs of the weight's axes (axis None: broadcast)
    weight_offsets: tuple  # start index per weight axis

    def same_latent(self, other: "LinearMap") -> bool:
        return self.latent is other.latent and self.latent_runs == other.latent_runs


def is_product(located: Located) -> bool:
    return is_call(located.base, *PRODUCT_OPS)


def _side_runs(located: Located, atoms, side: str, rank: int) -> tuple:
    """Per op dim, the runs of one side's base (None where that side does not vary), and that side's offsets."""
    runs = []
    for dim in located.layout.dims:
        dim_runs = []
        for piece in dim:
            if piece.axis is None:
                dim_runs.append(Piece(None, piece.size))
                continue
            run = getattr(atoms.output_atoms[piece.axis], side)
            dim_runs.append(None if run is None else run.sub(piece.step, piece.size))
        runs.append(dim_runs)
    offsets = [0] * rank
    for axis, offset in enumerate(located.offsets):
        run = getattr(atoms.output_atoms[axis], side)
        if offset and run is not None and run.axis is not None:
            offsets[run.axis] += offset * run.step
    return runs, tuple(offsets)


def linear_map(located: Located, what: str) -> LinearMap:
    """located: an op tensor [B, S, Hkv, D] over a product's output. Raises Decline unless it is a per-head
    linear map of one latent."""
    product = located.base
    left = walk_operand(product.args[0], allow_scale=False)
    right = walk_operand(product.args[1], allow_scale=False)
    atoms = bmm_atoms(left.layout, right.layout)
    if atoms is None:
        raise Decline(f"the product computing the {what} cannot be followed",
                      fix=f"compute the {what} as latent @ W (linear, matmul or einsum over the latent's channels), "
                          "viewed as [B, S, H, D]", node=product)
    over_product = atoms.output_layout()
    if fake_value(product).dim() == 2:  # mm: no batch dim
        over_product = Layout(over_product.dims[1:], over_product.base_sizes)
    over_atoms = compose_located(located, over_product, product)
    reasons = []
    for latent_side, weight_side, latent, weight in (("left", "right", left, right), ("right", "left", right, left)):
        found = _read_sides(over_atoms, atoms, latent_side, weight_side, latent.base, weight.base, what)
        if isinstance(found, LinearMap):
            return found
        reasons.append(found)
    raise Decline(reasons[0],
                  fix=f"compute the {what} as one per-head linear map of the cached latent: latent [B, S, C] @ W [C, "
                      "H * D], viewed as [B, S, H, D]", node=product)


def _real(run: Optional[Piece]) -> bool:
    return run is not None and run.axis is not None


def _read_sides(located: Located, atoms, latent_side: str, weight_side: str, latent: fx.Node, weight: fx.Node,
                what: str):
    """A LinearMap with the latent on latent_side, or the reason why not (a string)."""
    lat_runs, lat_offsets = _side_runs(located, atoms, latent_side, fake_value(latent).dim())
    w_runs, w_offsets = _side_runs(located, atoms, weight_side, fake_value(weight).dim())
    if any(lat_offsets):
        return f"the {what} reads its latent at an offset"
    for dim in (BATCH, KEY):
        if any(_real(run) for run in w_runs[dim]):
            return f"the {what}'s map varies with the batch or the key position (it is not a weight)"
        if not all(_real(run) for run in lat_runs[dim]):
            return f"the {what} is not read from one latent along the batch and the key position"
    if any(_real(run) for run in lat_runs[DIM]) or not all(_real(run) for run in w_runs[DIM]):
        return f"the {what}'s head dim is not a dim of the weight alone"
    latent_heads, head_maps, weight_only_seen = [], [], False
    for lat, w in zip(lat_runs[HEAD], w_runs[HEAD]):
        if _real(lat):
            if weight_only_seen:
                return f"the {what}'s latent heads are not the major part of its heads"
            latent_heads.append(lat)
        else:
            weight_only_seen = True
        head_maps.append(w if w is not None else Piece(None, lat.size))
    summed_latent = [getattr(atom, latent_side) for atom in atoms.contraction]
    summed_weight = [getattr(atom, weight_side) for atom in atoms.contraction]
    if not all(_real(run) for run in summed_latent + summed_weight):
        return f"the {what}'s product sums over a broadcast dim"
    summed_latent = merge_adjacent(summed_latent)
    if len(summed_latent) != 1:
        return f"the {what}'s product does not sum one run of the latent"
    return LinearMap(latent, [lat_runs[BATCH], lat_runs[KEY], latent_heads, list(summed_latent)],
                     weight, [head_maps, w_runs[DIM], summed_weight], w_offsets)

"""Score terms and the "slots" of the score tensor.

A ScoreTerm is one q.k product feeding the scores (MLA/GLA have two: latent and rope; GTA's concatenated
key splits into two). The softmax input's index space is cut into slots, the common refinement of what
every term does with it; each slot records, per term, which run of q and which run of k it reads. Roles
follow from that: a slot where k varies but q does not is the key axis; where both vary, batch or KV head;
where only q varies, a query row (a head of a KV group, or a query position)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch

from ..decline import UNEXPECTED_GRAPH, Decline
from .layout import Layout, Piece, fake_value, compose, merge_adjacent
from .operands import Operand, is_call, walk_operand
from .products import Atom, ProductAtoms, bmm_atoms
from .score_side import RawTerm
from .sizes import Size, divides, exact_div, known_equal

aten = torch.ops.aten


@dataclasses.dataclass
class ScoreTerm:
    q: Operand
    k: Operand
    atoms: ProductAtoms
    c_over_atoms: Layout  # the softmax input over this term's atoms
    q_window: Optional[tuple]  # (start, length) on q's contraction axis when the key is one part of a cat
    scale: float
    q_contraction: Optional[Piece] = None
    k_contraction: Optional[Piece] = None


@dataclasses.dataclass
class Slot:
    dim: int  # dim of the softmax input
    size: Size
    atoms: tuple  # one Atom per term: left = run of that term's q, right = run of its k
    role: str = ""  # 'key', or 'paired' / 'row' until plan.choose_roles names them batch, head, position, group


def _split_atom(atom: Atom, minor_size: Size) -> tuple:
    major_size = exact_div(atom.size, minor_size)
    return atom.sub(minor_size, major_size), atom.sub(1, minor_size)


def align_many(sequences: list) -> Optional[list]:
    """Common refinement of several major-to-minor atom sequences over the same index range."""
    queues = [list(seq) for seq in sequences]
    aligned = []
    while all(queues):
        heads = [queue[0] for queue in queues]
        smallest = next((h.size for h in heads if all(divides(h.size, other.size) for other in heads)), None)
        if smallest is None:
            return None
        row = []
        for queue in queues:
            head = queue.pop(0)
            if known_equal(head.size, smallest):
                row.append(head)
            else:
                major, minor = _split_atom(head, exact_div(head.size, smallest))
                row.append(major)
                queue.insert(0, minor)
        aligned.append(tuple(row))
    if any(queues):
        return None
    return aligned


def _merge_atoms(major: Atom, minor: Atom) -> Optional[Atom]:
    merged = []
    for a, b in ((major.left, minor.left), (major.right, minor.right)):
        if a is None and b is None:
            merged.append(None)
            continue
        if a is None or b is None:
            return None
        run = merge_adjacent([a, b])
        if len(run) != 1:
            return None
        merged.append(run[0])
    return Atom(merged[0], merged[1], major.size * minor.size)


def merge_slots(slots: list) -> list:
    merged: list[Slot] = []
    for slot in slots:
        if merged and merged[-1].dim == slot.dim:
            combined = [_merge_atoms(a, b) for a, b in zip(merged[-1].atoms, slot.atoms)]
            if all(c is not None for c in combined):
                merged[-1] = Slot(slot.dim, merged[-1].size * slot.size, tuple(combined))
                continue
        merged.append(slot)
    return merged


def _single(pieces, what: str) -> Piece:
    merged = merge_adjacent(list(pieces))
    if len(merged) != 1 or merged[0].axis is None:
        raise Decline(f"{what} is not one run of one axis",
                      fix=f"{what} as one dim of its tensor (view the projection as [.., H, D])")
    return merged[0]


def _term_from_layouts(raw_scale: float, c_over_product: Layout, q: Operand, k: Operand,
                       q_window: Optional[tuple]) -> ScoreTerm:
    atoms = bmm_atoms(q.layout, k.layout)
    if atoms is None:
        raise Decline("the operands of a q.k product do not line up over batch or head dims",
                      fix="q and k with the same batch and head dims (expand or repeat_interleave the KV heads to the "
                          "query heads, or SDPA enable_gqa)")
    c_over_atoms = compose(c_over_product, atoms.output_layout())
    if c_over_atoms is None:
        raise Decline("the scores regroup the q.k product in a way that cannot be followed",
                      fix="reshape the q @ k product only back to [B, H, Lq, S] (no regrouping of its batch and head "
                          "dims)")
    term = ScoreTerm(q, k, atoms, c_over_atoms, q_window, raw_scale * q.factor * k.factor)
    term.q_contraction = _single([a.left for a in atoms.contraction if a.left is not None], "the query's head dim")
    term.k_contraction = _single([a.right for a in atoms.contraction if a.right is not None], "the key's head dim")
    if any(a.left is None or a.right is None for a in atoms.contraction):
        raise Decline("the q.k product sums over a broadcast dim",
                      fix="nothing: a head dim summed over an expanded (broadcast) q or k is not attention's dot "
                          "product; the site stays with Inductor")
    return term


def terms_from_product(raw: RawTerm, split_cat: bool) -> list:
    q = walk_operand(raw.product.args[0], allow_scale=True)
    k = walk_operand(raw.product.args[1], allow_scale=True)
    return terms_from_operands(raw.scale, raw.c_over_product, q, k, split_cat)


def terms_from_operands(scale: float, c_over_product: Layout, q: Operand, k: Operand, split_cat: bool) -> list:
    """q: [b, m, k] and k: [b, k, n] (or without b) operands of one product feeding the scores. With
    split_cat, a key concatenated along its head dim becomes one term per part (GTA: tied part + shared rope
    key); without, the concatenation is read as one key tensor."""
    if q.layout.rank != k.layout.rank or q.layout.rank not in (2, 3):
        raise Decline("the q.k product has unexpected operand ranks", fix=UNEXPECTED_GRAPH)
    cat = _cat_on_contraction(k) if split_cat else None
    if cat is None:
        return [_term_from_layouts(scale, c_over_product, q, k, None)]
    return _split_cat_term(scale, c_over_product, q, k, cat)


def _cat_on_contraction(k: Operand) -> Optional[int]:
    """The cat dim when the key is a cat along the axis the product sums over (GTA's nope + rope key)."""
    if not is_call(k.base, aten.cat.default):
        return None
    rank = fake_value(k.base).dim()
    dim = k.base.args[1] if len(k.base.args) > 1 else k.base.kwargs.get("dim", 0)
    dim = dim + rank if dim < 0 else dim
    contraction = k.layout.dims[-2]
    if not any(piece.axis == dim for piece in contraction):
        return None
    return dim


def _split_cat_term(scale: float, c_over_product: Layout, q: Operand, k: Operand, dim: int) -> list:
    k_piece = _single(k.layout.dims[-2], "the concatenated key's head dim")
    q_piece = _single(q.layout.dims[-1], "the query's head dim")
    total = fake_value(k.base).shape[dim]
    if k_piece.axis != dim or not known_equal(k_piece.size, total) or not known_equal(k_piece.step, 1):
        raise Decline("the q.k product reads part of a concatenated key",
                      fix="attend over the whole concatenated key (cat the parts along the head dim and use all of it)")
    if not known_equal(q_piece.step, 1):
        raise Decline("the query's head dim is strided", fix="the query's head dim contiguous (its last, stride-1 dim)")
    terms = []
    offset = 0
    for part in k.base.args[0]:
        length = fake_value(part).shape[dim]
        part_dims = list(k.layout.dims)
        part_dims[-2] = (Piece(dim, length),)
        part_layout = Layout(tuple(part_dims), tuple(fake_value(part).shape))
        inner = walk_operand(part, allow_scale=False)
        composed = compose(part_layout, inner.layout)
        if composed is None:
            raise Decline("a part of the concatenated key cannot be followed to its source",
                          fix="build each part of the concatenated key from its cache with views only (view, reshape, "
                              "transpose, permute, expand, slice, select) between the projections or caches and the "
                              "attention", node=part)
        part_k = Operand(inner.base, composed, k.factor, k.nodes + [k.base] + inner.nodes)
        q_dims = list(q.layout.dims)
        q_dims[-1] = (Piece(q_piece.axis, length),)
        part_q = Operand(q.base, Layout(tuple(q_dims), q.layout.base_sizes), q.factor, q.nodes)
        terms.append(_term_from_layouts(scale, c_over_product, part_q, part_k, (offset, length)))
        offset = offset + length
    return terms


def build_slots(terms: list, rank: int) -> list:
    slots = []
    for dim in range(rank):
        sequences = []
        for term in terms:
            sequence = []
            for piece in term.c_over_atoms.dims[dim]:
                if piece.axis is None:
                    sequence.append(Atom(None, None, piece.size))
                else:
                    sequence.append(term.atoms.output_atoms[piece.axis].sub(piece.step, piece.size))
            sequences.append(sequence)
        aligned = align_many(sequences)
        if aligned is None:
            raise Decline("the score terms index the scores differently",
                          fix="compute the latent and rope score terms over one [B, H, Lq, S] layout")
        slots.extend(Slot(dim, row[0].size, row) for row in aligned)
    return merge_slots(slots)


def slot_space(slots: list, rank: int) -> Layout:
    """The softmax input (and output) over the slot space: one axis per slot."""
    dims = [[] for _ in range(rank)]
    for index, slot in enumerate(slots):
        dims[slot.dim].append(Piece(index, slot.size))
    return Layout(tuple(tuple(d) for d in dims), tuple(slot.size for slot in slots))


def whole(piece: Optional[Piece], sizes) -> bool:
    """piece covers its whole base axis, in order."""
    return prefix(piece) and known_equal(piece.size, sizes[piece.axis])


def prefix(piece: Optional[Piece]) -> bool:
    """piece covers the first piece.size entries of its base axis, in order (a view, no copy)."""
    return piece is not None and piece.axis is not None and known_equal(piece.step, 1)


def assign_roles(slots: list, softmax_dim: int) -> None:
    for slot in slots:
        keys = [atom.right is not None for atom in slot.atoms]
        queries = [atom.left is not None for atom in slot.atoms]
        if slot.dim == softmax_dim:
            if any(queries):
                raise Decline(
                    f"the softmax runs over dim {softmax_dim}, which also indexes queries (heads or positions), "
                    "not only key positions",
                    fix="nothing: a softmax over heads or query positions is not attention; the site stays with Inductor "
                        "(attention takes it over the key dim, the last dim of q @ k.transpose(-1, -2))",
                )
            if not all(keys):
                raise Decline(f"a score term is broadcast along the softmax dim {softmax_dim}",
                              fix="nothing: a score term that is constant along the keys does not change the softmax "
                                  "(drop it); every term must vary with the key position")
            slot.role = "key"
            continue
        if any(key and not query for key, query in zip(keys, queries)):
            raise Decline(
                f"key positions also vary along dim {slot.dim}: the softmax over dim {softmax_dim} does not "
                "cover all keys",
                fix="take the softmax over the dim that holds all key positions, and give q a real dim wherever k has "
                    "one (no q expanded over the batch or the heads)",
            )
        if not any(queries):
            raise Decline(f"the scores are broadcast along dim {slot.dim}",
                          fix="scores that vary along every dim (no expand of q @ k over a dim it does not depend on)")
        slot.role = "paired" if any(keys) else "row"
    if sum(1 for slot in slots if slot.role == "key") != 1:
        raise Decline("key positions are split over several runs",
                      fix="the key positions in one dim of the scores ([B, H, Lq, S])")

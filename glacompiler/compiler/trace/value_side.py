"""The probabilities times V: which V axis serves as batch, KV head, key position and value dim, and
which node holds the attention output (the node our op's output replaces)."""
from __future__ import annotations

import dataclasses

import torch
from torch import fx

from ..decline import UNEXPECTED_GRAPH, Decline
from .layout import Layout, fake_value, compose, is_view_like, merge_adjacent, regroup
from .operands import Operand, convert_dtypes, is_call, walk_operand
from .products import ProductAtoms, bmm_atoms
from .score_side import PRODUCT_OPS
from .slots import whole

aten = torch.ops.aten


@dataclasses.dataclass
class ValueSide:
    v: Operand
    atoms: ProductAtoms  # left runs over the slot space, right runs over V's base
    output: fx.Node  # the node our op's output replaces
    output_over_atoms: Layout  # that node over the atoms of `atoms`
    slot_pieces: dict  # slot index -> run of V's base, for batch and KV-head slots
    key_piece: object  # run of V's base along key positions
    dim_piece: object  # run of V's base along the value dim
    chain: list  # nodes between the softmax output and the product, owned by the site


def follow_probabilities(probs: fx.Node) -> tuple:
    """(the product that consumes the probabilities, the nodes in between)."""
    chain = []
    current = probs
    while True:
        users = list(current.users)
        if len(users) != 1:
            raise Decline(
                f"the attention probabilities ({current.name}) are used by {len(users)} nodes "
                "(an intermediate is used elsewhere, e.g. returned attention weights)",
                fix="do not return or reuse the attention weights (output_attentions=False)",
                node=next((u for u in users if not is_call(u, *PRODUCT_OPS)), users[0]),
            )
        user = users[0]
        if is_call(user, *PRODUCT_OPS):
            if user.args[0] is not current:
                raise Decline("the probabilities are the right operand of the value product",
                              fix="compute probs @ v (the probabilities on the left)", node=user)
            return user, chain
        dtypes = convert_dtypes(user)
        if is_view_like(user) or (dtypes is not None and dtypes[1].is_floating_point):
            chain.append(user)
            current = user
            continue
        if dtypes is not None:  # an integer cast: not dropout, say what it is
            raise Decline(f"the probabilities are cast from {dtypes[0]} to {dtypes[1]} before the value product",
                          fix="keep the probabilities floating point (an integer cast rounds them to 0 or 1)",
                          node=user)
        raise Decline(
            f"the probabilities pass through {user.target} before the value product (dropout or reweighting)",
            fix="no dropout at inference (model.eval(), dropout_p=0) and no reweighting of the probabilities",
            node=user,
        )


def analyze_values(left_over_slots: Layout, v: Operand, slots: list, output: fx.Node, chain: list) -> ValueSide:
    """left_over_slots [b, m, k] x V [b, k, n]; `output` is the product itself, or (SDPA) a node holding the
    product reshaped to its own shape."""
    atoms = bmm_atoms(left_over_slots, v.layout)
    if atoms is None:
        raise Decline("the probabilities and V do not line up over batch or head dims",
                      fix="V with the same batch and head dims as the scores (expand or repeat_interleave the KV "
                          "heads, or SDPA enable_gqa)")
    if is_call(output, *PRODUCT_OPS):
        output_over_atoms = atoms.output_layout()
    else:
        output_over_atoms = output_layout_for(atoms, output)
    slot_sizes = [slot.size for slot in slots]
    slot_pieces = {}
    seen = set()
    for atom in atoms.batch + atoms.rows:
        if not whole(atom.left, slot_sizes):
            raise Decline("the value product splits a score dim differently from the q.k product",
                          fix="reshape the probabilities only back to the scores' layout before @ v")
        index = atom.left.axis
        slot = slots[index]
        seen.add(index)
        if slot.role in ("batch", "head", "paired"):
            if atom.right is None or atom.right.axis is None:
                raise Decline("V is not indexed by the same batch/KV-head axes as K",
                              fix="V indexed by the same batch and KV-head dims as K")
            slot_pieces[index] = atom.right
        elif atom.right is not None:
            raise Decline("V varies along a query row, so rows do not share their values",
                          fix="V indexed by batch, KV head, key position and value dim only")
    key_pieces = [a.left for a in atoms.contraction]
    value_keys = merge_adjacent([a.right for a in atoms.contraction if a.right is not None])
    key_slot = next(i for i, s in enumerate(slots) if s.role == "key")
    if (
        len(key_pieces) != 1
        or not whole(key_pieces[0], slot_sizes)
        or key_pieces[0].axis != key_slot
        or len(value_keys) != 1
        or value_keys[0].axis is None
    ):
        raise Decline("the value product does not sum the probabilities over the key positions of V",
                      fix="nothing: probs @ v must sum over the key positions of V; any other contraction is not "
                          "attention (the site stays with Inductor)")
    dims = merge_adjacent([a.right for a in atoms.cols if a.right is not None])
    if len(dims) != 1 or dims[0].axis is None or len(atoms.cols) != len([a for a in atoms.cols if a.right]):
        raise Decline("the value dim of V is not one run of one axis",
                      fix="V's value dim as one dim of its tensor ([.., Hkv, Dv] view of the projection)")
    missing = [i for i, s in enumerate(slots) if s.role != "key" and i not in seen]
    if missing:
        # (A sum over a query or head dim was declined above; a score dim missing here is read at one index.)
        raise Decline("the value product reads only one index of a score dim (e.g. probs[:, 0] @ v[:, 0])",
                      fix="take all the probabilities into @ v and index the attention output instead "
                          "((probs @ v)[:, 0])")
    return ValueSide(v, atoms, output, output_over_atoms, slot_pieces, value_keys[0], dims[0], chain)


def values_of_product(probs: fx.Node, slots: list, c_over_slots: Layout) -> ValueSide:
    product, chain = follow_probabilities(probs)
    left = walk_operand(product.args[0], allow_scale=False, any_float_cast=True)
    if left.base is not probs:
        raise Decline("the value product's left operand is not the probabilities, or views them in a way that "
                      "cannot be followed back to them (e.g. their batch and head dims regrouped)",
                      fix="use the softmax output (cast, or viewed only back to the scores' layout) as the left "
                          "operand of @ v")
    left_over_slots = compose(left.layout, c_over_slots)
    if left_over_slots is None:
        raise Decline("the probabilities are regrouped in a way that cannot be followed",
                      fix="reshape the probabilities only back to the scores' layout before @ v")
    v = walk_operand(product.args[1], allow_scale=False)
    if v.layout.rank != left_over_slots.rank:
        raise Decline("the value product has unexpected operand ranks", fix=UNEXPECTED_GRAPH)
    return analyze_values(left_over_slots, v, slots, product, chain + left.nodes)


def output_layout_for(atoms: ProductAtoms, output: fx.Node) -> Layout:
    """An output that is the (virtual) product reshaped to its own shape, e.g. SDPA's [*, Hq, L, Ev]."""
    dims = regroup(atoms.output_layout().pieces(), list(fake_value(output).shape))
    if dims is None:
        raise Decline("the attention output cannot be related to the value product", fix=UNEXPECTED_GRAPH)
    return Layout(tuple(merge_adjacent(d) for d in dims), tuple(a.size for a in atoms.output_atoms))

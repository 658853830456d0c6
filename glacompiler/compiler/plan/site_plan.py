"""A matched site turned into a plan: which view of which graph tensor becomes each argument of
glacompiler.attention_with_kvcache, and how the op's output is laid back out.

The op's layout: q [B, Lq, Hq, Dq], caches [B, S, Hkv, D], query head h reads KV head h // (Hq / Hkv).
Slots map onto it: the batch slot -> B, the position slot -> Lq, the KV-head slot -> Hkv, and the query
rows of a KV group (GQA's group, MQA/MLA's heads) -> the minor part of Hq. Rows that a mask tells apart are
query positions; the others are heads (rows with the same mask are interchangeable)."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import torch
from torch import fx

from ...kernels.latent_hopper.support import QUERY_ROW_ALIGNMENT
from ...op.validation import MAX_QUERY_LEN, SUPPORTED_DTYPES, validate_inputs
from ...spec import AttentionSpec, dtype_name
from ..decline import UNEXPECTED_GRAPH, Decline
from ..trace.key_prefix import is_key_prefix
from ..trace.layout import Piece, fake_value
from ..trace.sizes import is_concrete, known_equal, known_less, known_one, product, size_hint
from ..trace.value_side import ValueSide


@dataclasses.dataclass
class Roles:
    """Slot indices per role of the op, each list major to minor (a role may span several dims of the
    graph's tensors, e.g. heads laid out as [latent head, group] by an einsum)."""

    batch: list
    position: list  # at most one
    head: list  # KV heads
    groups: list  # query rows within a KV group
    key: int

    def query_order(self) -> list:
        return self.batch + self.position + self.head + self.groups


@dataclasses.dataclass
class TensorPlan:
    """How to view a graph tensor (base) in the op's dim order, without copying it."""

    base: fx.Node
    split_shape: list  # base.reshape(split_shape): axes split into the runs the site reads (splits are views)
    slices: list  # (dim, length): the site reads only the first `length` entries of that split dim
    squeeze: list  # unit dims of the split tensor that the op does not take
    order: list  # permutation of the remaining dims into the op's order
    unsqueeze: list  # positions, in the op's order, of dims the tensor does not have (size 1)
    merged_shape: Optional[list] = None  # when a role spans several dims: the op's shape (merging them)
    # (axis, length): axes of base read only up to `length` and split further (the query part of a fused QKV
    # projection viewed as heads): sliced before the reshape to split_shape
    prefixes: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class QueryPlan:
    view: TensorPlan  # [B, Lq, KV head, groups..., D]
    shape: list  # [B, Lq, Hq, D]: the KV head and group dims merged (a small copy of q at most)
    window: Optional[tuple]  # (start, length) of the head dim, when only part of it is used


@dataclasses.dataclass
class OutputPlan:
    node: fx.Node  # replaced by the op's output
    split_shape: list  # the op's out [B, Lq, Hq, Dv] split into batch, position, KV head, groups, value dim
    order: list  # permutation of split dims into the node's order
    shape: list
    dtype: torch.dtype


@dataclasses.dataclass
class SitePlan:
    form: str
    spec: AttentionSpec
    q: QueryPlan
    k: TensorPlan
    v: Optional[TensorPlan]  # None: V is k_cache (tied)
    q_rope: Optional[QueryPlan]
    k_rope: Optional[TensorPlan]
    masks: list  # PlacedMask
    causal_top_left: bool  # SDPA is_causal: key j visible to query i iff j <= i
    roles: Roles
    slots: list
    scale: float
    output: OutputPlan
    anchor: fx.Node  # new nodes go before it
    owned: list  # nodes of the site that die once the output is replaced
    query_len: int
    key_len: object
    extensions: Optional[object] = None  # plan/extensions.py's ExtensionPlan: softcap, sinks, ALiBi slopes
    # The one mask allows a prefix of the keys of a single query row: the op takes its count of allowed keys as
    # the lengths instead (trace/key_prefix.py)
    mask_as_lengths: bool = False


def choose_roles(slots: list, terms: list, positions: set, rank: int, per_head: frozenset = frozenset(),
                 masked: frozenset = frozenset()) -> tuple:
    """(Roles, main term index or None when undecided, rope term index or None). Dims where both q and k
    vary: with one term, the first is the batch and the rest KV heads; with two terms (latent + rope), those
    where both terms' keys vary are the batch, those where only one term's key varies are KV heads and make
    that term the main one (the rope key is shared by all heads).

    A batch of 1 has no dim in the scores. So where one term leaves one such dim, it is the KV heads when it lies
    past the first dim of scores of 4 or more dims ([B, H, Lq, S]: the heads' dim) or a per-head tensor varies
    along it (`per_head`: sinks, ALiBi slopes), and no mask varies along it (`masked`: a mask varies per sequence,
    and one varying per head is the op's only as a batch)."""
    paired = [i for i, s in enumerate(slots) if s.role == "paired"]
    rows = [i for i, s in enumerate(slots) if s.role == "row"]
    position = [i for i in rows if i in positions]
    if len(position) > 1:
        raise Decline("query positions are spread over several dims",
                      fix="the query positions in one dim ([B, H, Lq, D] or [B, Lq, H, D])")
    groups = [i for i in rows if i not in positions]
    if len(terms) == 1:
        batch, head = paired[:1], paired[1:]
        if len(paired) == 1 and paired[0] not in masked and (
                paired[0] in per_head or (rank >= 4 and slots[paired[0]].dim > 0)):
            batch, head = [], paired  # a batch of 1 (its dim is dropped): the one paired dim is the KV heads
        main, rope = 0, None
    elif len(terms) == 2:
        batch = [i for i in paired if all(a.right is not None for a in slots[i].atoms)]
        head = [i for i in paired if i not in batch]
        owners = {next(t for t, atom in enumerate(slots[i].atoms) if atom.right is not None) for i in head}
        if len(owners) > 1:
            raise Decline("each score term has keys per head: neither is one rope key shared by all heads",
                          fix="one rope key for all heads (MLA/GLA/GTA), or per-head keys concatenated into one key")
        main = owners.pop() if owners else None
        rope = None if main is None else 1 - main
    else:
        raise Decline(f"{len(terms)} q.k products feed the scores (at most latent + rope)",
                      fix="one q @ k product (latent + rope: two); concatenate the parts of q and k instead of adding "
                          "more products")
    key = next(i for i, s in enumerate(slots) if s.role == "key")
    for role, indices in (("batch", batch), ("head", head), ("position", position), ("group", groups)):
        for index in indices:
            slots[index].role = role
    return Roles(batch, position, head, groups, key), main, rope


def is_tied(term, t: int, slots: list, roles: Roles, values: ValueSide) -> bool:
    """K of the main term is V itself (or its first Dq channels): MLA/GLA latent, GTA tied state."""
    if term.k.base is not values.v.base:
        return False
    for index in roles.batch + roles.head:
        if slots[index].atoms[t].right != values.slot_pieces.get(index):
            return False
    if slots[roles.key].atoms[t].right != values.key_piece:
        return False
    k_dim, v_dim = term.k_contraction, values.dim_piece
    return (k_dim.axis == v_dim.axis and known_equal(k_dim.step, 1) and known_equal(v_dim.step, 1)
            and is_concrete(k_dim.size) and is_concrete(v_dim.size) and k_dim.size <= v_dim.size)


def tensor_plan(base: fx.Node, pieces: list, what: str, merged_shape: Optional[list] = None) -> TensorPlan:
    """View `base` so that its dims are `pieces` in order (None: a size-1 dim the tensor lacks). Each base
    axis is either read whole, read as a prefix, or split into the pieces that read it (each whole, or a prefix
    of the block its outer neighbour steps over)."""
    sizes = list(fake_value(base).shape)
    by_axis: dict = {}
    for role, piece in enumerate(pieces):
        if piece is None:
            continue
        if piece.axis is None:  # callers pass real runs only (product atoms drop broadcast runs to None)
            raise Decline(f"the {what} is broadcast where the op needs a real dim", fix=UNEXPECTED_GRAPH, node=base)
        by_axis.setdefault(piece.axis, []).append((role, piece))
    split_shape, dim_of_role, unit_dims, slices, prefixes = [], {}, [], [], []
    for axis, size in enumerate(sizes):
        entries = by_axis.get(axis, [])
        if not entries:
            # No run reads this axis: the site reads its index 0 only (layouts have no offsets, so an axis
            # drops out only through a length-1 prefix slice).
            if not known_one(size):
                slices.append((len(split_shape), 1))
            unit_dims.append(len(split_shape))
            split_shape.append(size)
            continue
        if len(entries) == 1 and known_equal(entries[0][1].step, 1):
            role, piece = entries[0]
            dim_of_role[role] = len(split_shape)
            if not known_equal(piece.size, size):
                slices.append((len(split_shape), piece.size))
            split_shape.append(size)
            continue
        # Inner runs first. A run whose step leaves a gap below it (a per-head prefix of a [.., H * (Dn + Dv)]
        # projection: runs (H, Dn + Dv), (Dn, 1)) widens the dim below it to the gap, which is then read as a
        # prefix slice.
        entries.sort(key=lambda entry: size_hint(entry[1].step) or 0)
        dims = []  # [role, full size, size read, widened], inner to outer
        span = 1
        for role, piece in entries:
            if not known_equal(piece.step, span):
                gap = _gap_factor(piece.step, span) if dims else None
                if gap is None:
                    raise Decline(f"the {what} is read with a stride pattern the op cannot express (axis {axis} of "
                                  f"{base.name} is read in runs of {[(p.size, p.step) for _, p in entries]} (size, "
                                  "step): only runs that tile the axis, its start or a prefix of each of its "
                                  "blocks map onto the op's dims)",
                                  fix=_views_only_fix(what), node=base)
                dims[-1][1], dims[-1][3] = dims[-1][1] * gap, True
                span = piece.step
            dims.append([role, piece.size, piece.size, False])
            span = span * piece.size
        if not known_equal(span, size):
            if not known_less(span, size):
                raise Decline(f"the {what} is read in runs that do not tile axis {axis} of {base.name}",
                              fix=_views_only_fix(what), node=base)
            prefixes.append((axis, span))  # e.g. the query part of a fused QKV projection, split into heads
        for role, full, read, widened in reversed(dims):
            dim_of_role[role] = len(split_shape)
            if widened:
                slices.append((len(split_shape), read))
            split_shape.append(full)
    remaining = [dim for dim in range(len(split_shape)) if dim not in unit_dims]
    order = [remaining.index(dim_of_role[role]) for role, piece in enumerate(pieces) if piece is not None]
    unsqueeze = [role for role, piece in enumerate(pieces) if piece is None]
    return TensorPlan(base, split_shape, slices, unit_dims, order, unsqueeze, merged_shape, prefixes)


def _views_only_fix(what: str) -> str:
    return (f"build the {what} from its tensor with views only (view, reshape, transpose, permute, expand, slice, "
            "select) between the projections or caches and the attention, so that each op dim is a whole axis, its "
            "start or a prefix of each of its blocks")


def _gap_factor(step, span) -> Optional[int]:
    """step / span where a run of this step sits on whole blocks of the runs below it (concrete sizes only)."""
    if not (is_concrete(step) and is_concrete(span)):
        return None
    step, span = int(step), int(span)
    return step // span if step > span and step % span == 0 else None


def query_plan(term, t: int, slots: list, roles: Roles, what: str) -> QueryPlan:
    pieces = []
    for index in roles.query_order():
        piece = slots[index].atoms[t].left
        if piece is None:
            raise Decline(f"the {what} is broadcast along the {slots[index].role} dim",
                          fix=f"a {what} that varies along the {slots[index].role} dim (not expanded over "
                              "it)", node=term.q.base)
        pieces.append(piece)
    contraction = term.q_contraction
    if not known_equal(contraction.step, 1):
        raise Decline(f"the {what}'s head dim is strided",
                      fix=f"the {what}'s head dim contiguous (its last, stride-1 dim)", node=term.q.base)
    full = head_dim_span(term, pieces, what)
    window = term.q_window
    if window is None and not known_equal(contraction.size, full):
        window = (0, contraction.size)
    part = cat_part(term.q.base, contraction.axis, full, window)
    if part is not None:  # the part itself, so that the cat is not made only for the op to read a window of it
        full, window = contraction.size, None
    base = term.q.base if part is None else part
    view = tensor_plan(base, pieces + [Piece(contraction.axis, full)], what)
    shape = [
        slots_size(slots, roles.batch),
        slots_size(slots, roles.position),
        slots_size(slots, roles.head + roles.groups),
        full,
    ]
    return QueryPlan(view, shape, window)


def cat_part(base: fx.Node, axis: int, full, window: Optional[tuple]) -> Optional[fx.Node]:
    """The input of `base` = cat(parts, axis) that is exactly the query's window of its head dim (the whole axis), in
    base's dtype and with a start and strides the Hopper latent kernel takes in place (QUERY_ROW_ALIGNMENT; not
    broadcast); None otherwise. A model that concatenates the query's rope-free and rope parts and scores each
    against its own key (q @ cat(k_nope, k_rope)^T) gives the op those parts: the op reads them where they are made,
    and the cat is left unused."""
    if window is None or base.op != "call_function" or base.target is not torch.ops.aten.cat.default:
        return None
    value = fake_value(base)
    parts = base.args[0]
    dim = base.args[1] if len(base.args) > 1 else base.kwargs.get("dim", 0)
    start, length = window
    if (not isinstance(dim, int) or dim % value.dim() != axis or not known_equal(full, value.shape[axis])
            or not (is_concrete(start) and is_concrete(length))):
        return None
    offset = 0
    for part in parts:
        part_value = fake_value(part) if isinstance(part, fx.Node) else None
        if part_value is None or part_value.dim() != value.dim() or not is_concrete(part_value.shape[axis]):
            return None
        width = int(part_value.shape[axis])
        if (offset, width) == (int(start), int(length)):
            strides = [stride for d, (size, stride) in enumerate(zip(part_value.shape, part_value.stride()))
                       if d != axis and not known_one(size)]
            aligned = all(is_concrete(step) and int(step) % QUERY_ROW_ALIGNMENT == 0
                          for step in strides + [part_value.storage_offset()])
            # (a stride of 0, a part broadcast over heads, is left to the cat: the op's queries are never broadcast)
            in_place = aligned and 0 not in [int(stride) for stride in strides] and known_one(part_value.stride(axis))
            return part if in_place and part_value.dtype == value.dtype else None
        offset += width
    return None


def head_dim_span(term, pieces: list, what: str):
    """The run of the query's base axis that holds one head's head dim: the whole axis, or, where the same
    axis also holds heads or positions (a projection's [.., H * D] output viewed as [.., H, D]), the part below
    the most minor of those pieces. The op reads the head dim (or its window) out of that run."""
    contraction = term.q_contraction
    base_size = fake_value(term.q.base).shape[contraction.axis]
    steps = [piece.step for piece in pieces if piece.axis == contraction.axis]
    if not steps:
        return base_size
    if not all(is_concrete(step) for step in steps) or not is_concrete(contraction.size):
        raise Decline(f"the {what}'s head dim shares axis {contraction.axis} of {term.q.base.name} with other dims "
                      "whose strides are symbolic",
                      fix="fixed head counts and head dims (dynamo marks a size dynamic after it "
                          "changes)", node=term.q.base)
    span = min(steps)
    start = term.q_window[0] if term.q_window is not None else 0
    if start + contraction.size > span:  # views nest their runs (a cat part's window lies in the head dim)
        raise Decline(f"the {what}'s head dim ({contraction.size} wide) overlaps the other dims read from axis "
                      f"{contraction.axis} of {term.q.base.name} (the next one starts every {span} entries)",
                      fix=UNEXPECTED_GRAPH, node=term.q.base)
    return span


def slots_size(slots: list, indices: list):
    return product(slots[i].size for i in indices)


def cache_plan(base: fx.Node, groups: list, what: str) -> TensorPlan:
    """View base as the op's cache layout; groups: per op dim, the runs of base that make it up (an empty
    group is a size-1 dim the tensor lacks; the last group is the head dim, one run)."""
    last = groups[-1][0]
    value = fake_value(base)
    if not (known_equal(last.step, 1) and (known_one(value.shape[last.axis]) or value.stride()[last.axis] == 1)):
        raise Decline(f"the {what}'s head dim is not contiguous in memory (the op would need a copy)",
                      fix=f"keep the {what} with its head dim last and contiguous ([B, S, H, D] or [B, H, S, D])",
                      node=base)
    pieces = [piece for group in groups for piece in (group or [None])]
    merged = None
    if any(len(group) > 1 for group in groups):
        merged = [product(p.size for p in group) for group in groups]
    return tensor_plan(base, pieces, what, merged)


def output_plan(values: ValueSide, slots: list, roles: Roles) -> OutputPlan:
    atoms = values.atoms.output_atoms
    refs = ["dv" if atom.left is None else atom.left.axis for atom in atoms]
    split_refs = roles.query_order() + ["dv"]
    split_shape = [values.dim_piece.size if ref == "dv" else slots[ref].size for ref in split_refs]
    order = []
    for dim in values.output_over_atoms.dims:
        for piece in dim:
            atom = atoms[piece.axis]
            # The output is the value product itself, or SDPA's output whose dims are the scores' dims: each of
            # its pieces is a whole atom.
            if not (known_equal(piece.step, 1) and known_equal(piece.size, atom.size)):
                raise Decline("the attention output regroups a dim the op keeps whole", fix=UNEXPECTED_GRAPH,
                              node=values.output)
            order.append(split_refs.index(refs[piece.axis]))
    if sorted(order) != list(range(len(split_refs))):
        raise Decline("the attention output does not hold every (batch, query, head, value) entry once",
                      fix="use every (batch, query, head, value) entry of the attention output once (transpose or "
                          "reshape it; no slicing or repeating)", node=values.output)
    value = fake_value(values.output)
    return OutputPlan(values.output, split_shape, order, list(value.shape), value.dtype)


def check_scales(terms: list) -> float:
    scale = terms[0].scale
    for term in terms[1:]:
        if not math.isclose(term.scale, scale, rel_tol=1e-9):
            raise Decline("the score terms are scaled differently",
                          fix="one softmax scale for the latent and rope score terms (scale their sum, not each "
                              "product differently)")
    return scale


def _meta(shape, dtype) -> torch.Tensor:
    hinted = [size_hint(s) for s in shape]
    if any(h is None for h in hinted):
        raise Decline("a size has no example value", fix=UNEXPECTED_GRAPH)
    return torch.empty(hinted, dtype=dtype, device="meta")


def make_plan(form: str, terms: list, slots: list, roles: Roles, main: int, rope: Optional[int],
              values: ValueSide, masks: list, causal_top_left: bool, scale: float, anchor: fx.Node,
              owned: list) -> SitePlan:
    main_term = terms[main]
    query_len = slots_size(slots, roles.position)

    def key_runs(t: int) -> tuple:
        """(batch runs, key run, KV-head runs) of term t's key."""
        batch = [slots[i].atoms[t].right for i in roles.batch]
        heads = [slots[i].atoms[t].right for i in roles.head]
        return batch, slots[roles.key].atoms[t].right, heads

    batch_runs, key_run, head_runs = key_runs(main)
    tied = is_tied(main_term, main, slots, roles, values)
    if tied and not known_equal(main_term.k_contraction.size, values.dim_piece.size) and rope is None:
        tied = False  # K is the first channels of V without a rope part: read it as a separate cache
    q = query_plan(main_term, main, slots, roles, "query")
    v_groups = [[values.slot_pieces[i] for i in roles.batch], [values.key_piece],
                [values.slot_pieces[i] for i in roles.head], [values.dim_piece]]
    v_plan = cache_plan(values.v.base, v_groups, "value cache")
    if tied:
        k_plan, v_out = v_plan, None
        head_dim_k = values.dim_piece.size
    else:
        k_plan = cache_plan(main_term.k.base, [batch_runs, [key_run], head_runs, [main_term.k_contraction]],
                            "key cache")
        v_out = v_plan
        head_dim_k = main_term.k_contraction.size
    q_rope = k_rope = None
    rope_dim = 0
    if rope is not None:
        rope_term = terms[rope]
        rope_batch, rope_key, rope_heads = key_runs(rope)
        # choose_roles guarantees both: head slots are those where only the main term's key varies, group slots
        # have no key, and batch slots are those where every term's key varies.
        if any(run is not None for run in rope_heads) or any(slots[g].atoms[rope].right is not None
                                                              for g in roles.groups):
            raise Decline("the rope key is not shared by all heads", fix=UNEXPECTED_GRAPH)
        if any(run is None for run in rope_batch):
            raise Decline("the rope key is shared across the batch", fix=UNEXPECTED_GRAPH, node=rope_term.k.base)
        q_rope = query_plan(rope_term, rope, slots, roles, "rope query")
        k_rope = cache_plan(rope_term.k.base, [rope_batch, [rope_key], [rope_term.k_contraction]], "rope key cache")
        rope_dim = rope_term.k_contraction.size
    head_dim_q = main_term.q_contraction.size
    head_dim_v = values.dim_piece.size

    dtype = fake_value(q.view.base).dtype
    others = [fake_value(p.base).dtype for p in (k_plan, v_out, k_rope) if p is not None]
    others += [fake_value(q_rope.view.base).dtype] if q_rope is not None else []
    if dtype not in SUPPORTED_DTYPES or any(d != dtype for d in others):
        raise Decline(f"q, k, v dtypes {[dtype] + others} are not one supported dtype",
                      fix="q, k and v in one dtype of float16, bfloat16, float32")

    batch = slots_size(slots, roles.batch)
    num_kv_heads = slots_size(slots, roles.head)
    num_q_heads = q.shape[2]
    key_len = key_run.size
    for size, what in ((num_q_heads, "number of query heads"), (num_kv_heads, "number of KV heads"),
                       (head_dim_q, "head dim"), (head_dim_k, "key head dim"), (head_dim_v, "value head dim"),
                       (rope_dim, "rope dim")):
        if not is_concrete(size):
            raise Decline(f"the {what} is symbolic",
                          fix=f"a fixed {what} (dynamo marks a size dynamic after it changes between calls)")
    spec = AttentionSpec.from_dims(num_q_heads, num_kv_heads, head_dim_q, head_dim_k, head_dim_v, rope_dim, tied,
                                   False, dtype_name(dtype))
    try:
        if not is_concrete(query_len):
            raise Decline("the query length is symbolic",
                          fix="decode steps with a fixed number of new tokens (or torch._dynamo.mark_static on it)")
        if query_len > MAX_QUERY_LEN:
            raise Decline(f"query length {query_len} > {MAX_QUERY_LEN} (prefill): left to Inductor",
                          fix=f"nothing to do: decode steps (at most {MAX_QUERY_LEN} new tokens) are the ones fused")
        for mask in masks:
            if len(roles.batch) > 1 and any(index in roles.batch for index in mask.slot_axes):
                raise Decline("the mask varies along a batch that spans several dims",
                              fix="one batch dim in the scores ([B, H, Lq, S]) when the mask varies per sequence",
                              node=mask.node)
        output = output_plan(values, slots, roles)
        # (lengths are per sequence: not for a mask that varies per head; is_key_prefix reads the mask unsplit)
        mask_as_lengths = (query_len == 1 and not causal_top_left and len(masks) == 1 and masks[0].split_shape is None
                           and not any(index in roles.head + roles.groups for index in masks[0].slot_axes)
                           and is_key_prefix(masks[0], roles.key))
        plan = SitePlan(form, spec, q, k_plan, v_out, q_rope, k_rope, masks, causal_top_left, roles, slots, scale,
                        output, anchor, owned, query_len, key_len, mask_as_lengths=mask_as_lengths)
        _validate(plan, batch, key_len)
    except Decline as decline:
        decline.spec = spec
        raise
    return plan


def _validate(plan: SitePlan, batch, key_len) -> None:
    """The op's own argument checks, on meta tensors with the example sizes."""
    spec = plan.spec
    dtype = spec.torch_dtype
    q = _meta([batch, plan.query_len, spec.num_q_heads, spec.head_dim_q], dtype)
    k = _meta([batch, key_len, spec.num_kv_heads, spec.head_dim_k], dtype)
    v = None if plan.v is None else _meta([batch, key_len, spec.num_kv_heads, spec.head_dim_v], dtype)
    q_rope = k_rope = None
    if plan.q_rope is not None:
        q_rope = _meta([batch, plan.query_len, spec.num_q_heads, spec.rope_dim], dtype)
        k_rope = _meta([batch, key_len, spec.rope_dim], dtype)
    mask = None
    if plan.masks or plan.causal_top_left:
        mask = _meta([batch, 1, plan.query_len, key_len], torch.bool)
    try:
        validate_inputs(q, k, v, q_rope, k_rope, None, None, mask, plan.scale, None)
    except (ValueError, TypeError) as error:
        raise Decline(f"unsupported by the op: {error}",
                      fix="head dims and query lengths the op takes (README, 'The op')") from None

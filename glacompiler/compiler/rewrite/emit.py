"""Emit the nodes a SitePlan asks for: views of the graph's own tensors (no copies of the caches), the
op call, and the output laid back out; then drop the nodes of the old attention that nothing reads."""
from __future__ import annotations

import contextlib
import math
import operator
from typing import Optional

import torch
from torch import fx
from torch._dynamo.utils import counters
from torch._guards import detect_fake_mode
from torch.utils import _pytree as pytree

from ..plan.site_plan import QueryPlan, SitePlan, TensorPlan
from ..trace.layout import fake_value, is_view_like
from ..trace.masks import PlacedMask
from ..trace.sizes import is_concrete, known_equal, known_one

aten = torch.ops.aten
prims = torch.ops.prims


def graph_fake_mode(graph: fx.Graph):
    """The graph's fake mode, from its inputs' values (every value shares it; detect_fake_mode over all the
    graph's values cost ~30 ms per site on an 8-layer Llama), else from all values."""
    inputs = [n.meta.get("val") for n in graph.nodes if n.op == "placeholder"]
    fake_mode = detect_fake_mode([v for v in inputs if isinstance(v, torch.Tensor)])
    if fake_mode is None:
        fake_mode = detect_fake_mode([n.meta.get("val") for n in graph.nodes
                                      if isinstance(n.meta.get("val"), torch.Tensor)])
    return fake_mode


def fake_inputs(args, kwargs=None) -> tuple:
    """(args, kwargs) with every graph node replaced by its fake value."""
    return pytree.tree_map(lambda a: a.meta.get("val") if isinstance(a, fx.Node) else a,
                           (tuple(args), dict(kwargs or {})))


def record_input_values(node: fx.Node) -> tuple:
    """(fake args, fake kwargs) of a node the pass inserts, recorded as Inductor's "eager_input_vals": where a node
    carries them Inductor gives a custom op (and a user-defined Triton kernel) its inputs with exactly those strides,
    copying where its own layout of an intermediate differs (a dtype cast of a transposed key, say); a node without
    them, as inserted by a pass, gets whatever layout Inductor chose (graph.py, "inserted by a custom pass")."""
    values = fake_inputs(node.args, node.kwargs)
    node.meta["eager_input_vals"] = values
    return values


class Emitter:
    """Inserts nodes before an anchor, giving each the fake value Inductor's later passes expect."""

    def __init__(self, graph: fx.Graph, anchor: fx.Node):
        self.graph = graph
        self.anchor = anchor
        self.fake_mode = graph_fake_mode(graph)
        self.stack_trace = anchor.meta.get("stack_trace")
        self.created: list = []

    def call(self, target, *args, **kwargs) -> fx.Node:
        with self.graph.inserting_before(self.anchor):
            node = self.graph.call_function(target, tuple(args), dict(kwargs))
        fake_args, fake_kwargs = record_input_values(node)
        if self.fake_mode is not None:
            with self.fake_mode:
                node.meta["val"] = target(*fake_args, **fake_kwargs)
        else:
            node.meta["val"] = target(*fake_args, **fake_kwargs)
        if self.stack_trace is not None:
            node.meta["stack_trace"] = self.stack_trace
        self.created.append(node)
        return node

    def size(self, size):
        """An int, or a graph node producing the SymInt (found among the tensors before the anchor)."""
        if is_concrete(size):
            return size
        for node in self.graph.nodes:
            if node is self.anchor:
                break
            value = node.meta.get("val")
            if isinstance(value, torch.SymInt) and known_equal(value, size):
                return node
            if isinstance(value, torch.Tensor):
                for dim, dim_size in enumerate(value.shape):
                    if not is_concrete(dim_size) and known_equal(dim_size, size):
                        return self.call(aten.sym_size.int, node, dim)
        raise RuntimeError(f"no node in the graph carries the size {size}")

    def shape(self, sizes) -> list:
        return [self.size(s) for s in sizes]

    def reshape(self, node: fx.Node, sizes) -> fx.Node:
        if list(fake_value(node).shape) == list(sizes):
            return node
        return self.call(aten.reshape.default, node, self.shape(sizes))

    def permute(self, node: fx.Node, order) -> fx.Node:
        if list(order) == list(range(len(order))):
            return node
        return self.call(aten.permute.default, node, list(order))


def build_view(emit: Emitter, plan: TensorPlan) -> fx.Node:
    node = plan.base
    for axis, length in plan.prefixes:
        node = emit.call(aten.slice.Tensor, node, axis, 0, emit.size(length))
    node = emit.reshape(node, plan.split_shape)
    for dim, length in plan.slices:
        node = emit.call(aten.slice.Tensor, node, dim, 0, emit.size(length))
    if plan.squeeze:
        node = emit.call(aten.squeeze.dims, node, list(plan.squeeze))
    node = emit.permute(node, plan.order)
    for position in plan.unsqueeze:
        node = emit.call(aten.unsqueeze.default, node, position)
    if plan.merged_shape is not None:
        node = emit.reshape(node, plan.merged_shape)
    return node


def build_query(emit: Emitter, plan: QueryPlan) -> fx.Node:
    node = emit.reshape(build_view(emit, plan.view), plan.shape)
    if plan.window is not None:
        start, length = plan.window
        node = emit.call(aten.slice.Tensor, node, 3, start, start + length)
    if fake_value(node).stride()[-1] != 1:
        node = emit.call(aten.clone.default, node, memory_format=torch.contiguous_format)
    return node


def build_mask(emit: Emitter, mask: PlacedMask, plan: SitePlan) -> fx.Node:
    """The mask as [B or 1, 1 or Hq, Lq or 1, S or 1]: Hq where it varies per KV head (T5's position bias, MPT's
    ALiBi buffer) or per query head, in the op's head order (KV head major), expanded over what it does not vary
    along."""
    node = mask.node
    if not mask.additive and not mask.attend_if:
        node = emit.call(aten.logical_not.default, node)
    if mask.additive and mask.multiplier != 1.0:
        node = emit.call(aten.mul.Tensor, node, mask.multiplier)
    if mask.split_shape is not None:  # one axis holds several slots: split it (a view)
        node = emit.reshape(node, mask.split_shape)
    for axis, length in mask.slices:
        node = emit.call(aten.slice.Tensor, node, axis, 0, emit.size(length))
    for axis in mask.unit_axes:
        if not known_one(fake_value(node).shape[axis]):
            node = emit.call(aten.slice.Tensor, node, axis, 0, 1)
    if mask.unit_axes:
        node = emit.call(aten.squeeze.dims, node, list(mask.unit_axes))
    remaining = sorted(mask.slot_axes.values())
    roles = plan.roles
    # One slot per op dim at most (plan/site_plan.py declines masks along a batch that spans several dims); where the
    # mask varies per head, every KV-head and group slot gets a dim, merged into Hq below.
    head_slots = roles.head + roles.groups
    per_head = any(slot in mask.slot_axes for slot in head_slots)
    head_dims = [[slot] for slot in head_slots] if per_head else [[]]
    per_dim = [roles.batch, *head_dims, roles.position, [roles.key]]
    varying = [next((s for s in slots if s in mask.slot_axes), None) for slots in per_dim]
    order = [remaining.index(mask.slot_axes[s]) for s in varying if s is not None]
    node = emit.permute(node, order)
    for position, slot in enumerate(varying):
        if slot is None:
            node = emit.call(aten.unsqueeze.default, node, position)
    if per_head:  # [B, Hkv..., G..., Lq, S] expanded -> [B, Hq, Lq, S] (KV head major, as the query's heads)
        sizes = list(fake_value(node).shape)
        head_sizes = [plan.slots[slot].size for slot in head_slots]
        node = emit.call(aten.expand.default, node, [-1, *head_sizes, -1, -1])
        node = emit.reshape(node, [sizes[0], plan.spec.num_q_heads, sizes[-2], sizes[-1]])
    return node


def build_causal_top_left(emit: Emitter, plan: SitePlan, device: torch.device) -> fx.Node:
    """SDPA's is_causal: query i sees key j iff j <= i (aligned at the top left, unlike the op's causal)."""
    query = emit.call(prims.iota.default, plan.query_len, start=0, step=1, dtype=torch.int64, device=device,
                      requires_grad=False)
    keys = emit.call(prims.iota.default, emit.size(plan.key_len), start=0, step=1, dtype=torch.int64,
                     device=device, requires_grad=False)
    visible = emit.call(aten.le.Tensor, emit.call(aten.unsqueeze.default, keys, 0),
                        emit.call(aten.unsqueeze.default, query, 1))
    return emit.call(aten.unsqueeze.default, emit.call(aten.unsqueeze.default, visible, 0), 0)


def combine_masks(emit: Emitter, booleans: list, additive: list, dtype: torch.dtype, device) -> Optional[fx.Node]:
    allowed = None
    for node in booleans:
        allowed = node if allowed is None else emit.call(aten.logical_and.default, allowed, node)
    bias = None
    for node in additive:
        bias = node if bias is None else emit.call(aten.add.Tensor, bias, node)
    if bias is None:
        return allowed
    if allowed is None:
        return bias
    excluded = emit.call(aten.scalar_tensor.default, -math.inf, dtype=fake_value(bias).dtype, device=device)
    return emit.call(aten.where.self, allowed, bias, excluded)


class SharedMaskRanges:
    """One mask_key_range (or count of allowed keys: lengths_for) per distinct mask in a graph. A model's layers
    usually each recompute the same causal or padding mask from the same inputs; sites whose masks are computed
    the same way (same pure ops on the same graph inputs, compared by hash-consing the masks' producers) share
    one range, so a decode step launches the range kernel once instead of once per layer."""

    def __init__(self, graph: fx.Graph):
        self.graph = graph
        self._structure_ids: dict = {}  # (op, target, argument ids) -> structure id
        self._node_ids: dict = {}  # node -> structure id
        self._ranges: dict = {}  # (mask structure, batch, capacity) -> mask_key_range node

    def _value_id(self, value):
        if isinstance(value, fx.Node):
            return ("node", self.node_id(value))
        if isinstance(value, (list, tuple)):
            return tuple(self._value_id(v) for v in value)
        if isinstance(value, dict):
            return tuple(sorted((k, self._value_id(v)) for k, v in value.items()))
        return (type(value).__name__, repr(value))

    def node_id(self, node: fx.Node) -> int:
        known = self._node_ids.get(node)
        if known is not None:
            return known
        target = node.target
        pure = (node.op == "call_function" and not node.is_impure()
                and not (isinstance(target, torch._ops.OpOverload)
                         and (torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable)))
        if node.op in ("placeholder", "get_attr"):
            structure = (node.op, node.target)
        elif pure:
            structure = (node.op, target, self._value_id(node.args), self._value_id(node.kwargs))
        else:
            structure = ("opaque", id(node))  # only equal to itself
        node_id = self._structure_ids.setdefault(structure, len(self._structure_ids))
        self._node_ids[node] = node_id
        return node_id

    def range_for(self, emit: "Emitter", mask: fx.Node, batch, capacity) -> fx.Node:
        key = (self.node_id(mask), self._value_id(batch), self._value_id(capacity))
        shared = self._ranges.get(key)
        if shared is not None and self._comes_before(shared, emit.anchor):
            return shared
        node = emit.call(torch.ops.glacompiler.mask_key_range.default, mask, batch, capacity)
        self._ranges[key] = node
        return node

    def lengths_for(self, emit: "Emitter", mask: fx.Node, batch) -> fx.Node:
        """[B] int32: the allowed keys of each row of a [B or 1, 1, 1, S] mask that allows a prefix of them
        (SitePlan.mask_as_lengths), counted. Inductor fuses the mask's computation into the count.
        batch: the batch size (int or SymInt)."""
        batch_size = emit.size(batch)
        key = ("lengths", self.node_id(mask), self._value_id(batch_size))
        shared = self._ranges.get(key)
        if shared is not None and self._comes_before(shared, emit.anchor):
            return shared
        if not known_equal(fake_value(mask).shape[0], batch):  # one mask for the batch: counted once a sequence,
            mask = emit.call(aten.expand.default, mask, [batch_size, -1, -1, -1])  # [B] in one kernel
        node = emit.call(aten.sum.dim_IntList, mask, [1, 2, 3], dtype=torch.int32)
        self._ranges[key] = node
        return node

    def _comes_before(self, node: fx.Node, anchor: fx.Node) -> bool:
        for current in self.graph.nodes:
            if current is node:
                return True
            if current is anchor:
                return False
        return False


def emit_site(graph: fx.Graph, plan: SitePlan, mask_ranges: SharedMaskRanges) -> list:
    """Rewrite one site; returns the nodes created."""
    emit = Emitter(graph, plan.anchor)
    q = build_query(emit, plan.q)
    k = build_view(emit, plan.k)
    v = None if plan.v is None else build_view(emit, plan.v)
    q_rope = None if plan.q_rope is None else build_query(emit, plan.q_rope)
    k_rope = None if plan.k_rope is None else build_view(emit, plan.k_rope)
    out = emit_op_call(emit, plan, mask_ranges, q, k, v, q_rope, k_rope)
    place_output(emit, plan, out)
    return emit.created


def mask_handling(plan: SitePlan) -> str:
    """How emit_op_call hands the site's masks to the op (the report's mask column): 'lengths' (one query row's
    prefix mask, counted per sequence: one maskless launch), 'boolean', 'additive' (a float mask, read wherever
    its key range is not dense), or '' where the site has none."""
    if not plan.masks and not plan.causal_top_left:
        return ""
    if plan.mask_as_lengths:
        return "lengths"
    return "additive" if any(m.additive for m in plan.masks) else "boolean"


def emit_op_call(emit: Emitter, plan: SitePlan, mask_ranges: SharedMaskRanges, q, k, v, q_rope, k_rope) -> fx.Node:
    """The site's masks (shared key range included) and the op call on the given operands; its output."""
    device = fake_value(q).device
    booleans = [build_mask(emit, m, plan) for m in plan.masks if not m.additive]
    additive = [build_mask(emit, m, plan) for m in plan.masks if m.additive]
    if plan.causal_top_left:
        booleans.append(build_causal_top_left(emit, plan, device))
    mask = combine_masks(emit, booleans, additive, fake_value(q).dtype, device)
    kv_range = lengths = None
    if mask is not None and plan.mask_as_lengths:
        lengths, mask = mask_ranges.lengths_for(emit, mask, fake_value(q).shape[0]), None
        counters["glacompiler"]["masks_as_lengths"] += 1
    elif mask is not None:
        kv_range = mask_ranges.range_for(emit, mask, emit.size(fake_value(q).shape[0]),
                                         emit.size(fake_value(k).shape[1]))
    extensions = ()
    if plan.extensions is not None:
        from .extensions import build_extension_arguments, scale_queries

        if plan.extensions.score_scale is not None:
            q, q_rope = scale_queries(emit, plan.extensions, [q, q_rope])
        extensions = build_extension_arguments(emit, plan.extensions, q)
    result = emit.call(
        torch.ops.glacompiler.attention_with_kvcache.default,
        q, k, v, q_rope, k_rope, lengths, None, mask, float(plan.scale), False, 0, kv_range, *extensions,
    )
    return emit.call(operator.getitem, result, 0)


def place_output(emit: Emitter, plan: SitePlan, out: fx.Node) -> None:
    """The op's output [B, Lq, Hq, Dv] laid out as the site's output node, which it replaces; the old site's
    nodes are dropped."""
    out = emit.reshape(out, plan.output.split_shape)
    out = emit.permute(out, plan.output.order)
    out = emit.reshape(out, plan.output.shape)
    if fake_value(out).dtype != plan.output.dtype:
        out = emit.call(torch.ops.prims.convert_element_type.default, out, plan.output.dtype)
    if _a_view_fails(emit, plan.output.node, out):
        out = emit.call(aten.clone.default, out, memory_format=torch.contiguous_format)
    plan.output.node.replace_all_uses_with(out)
    remove_dead(emit.graph, plan.owned)


def _a_view_fails(emit: Emitter, old: fx.Node, new: fx.Node, depth: int = 8) -> bool:
    """Whether a chain of views the graph takes of the site's old output fails on the new one (a trace records a
    reshape as view where the old output's strides allowed it; the op's output laid back out may have others, e.g.
    where rows a mask tells apart became query positions). Inductor lowers such a view as a copy, but the graph must
    run as written too; a contiguous output can be viewed as any shape of its size. The chain is replayed on fake
    values."""
    def fails(node: fx.Node, value, left: int) -> bool:
        for user in node.users:
            if left == 0 or not is_view_like(user) or user.args[0] is not node:
                continue
            args, kwargs = fake_inputs(user.args[1:], user.kwargs)
            try:
                viewed = user.target(value, *args, **kwargs)
            except Exception:  # (fake tensors raise their own kinds for a view the strides do not allow)
                return True
            if fails(user, viewed, left - 1):
                return True
        return False

    with emit.fake_mode if emit.fake_mode is not None else contextlib.nullcontext():
        return fails(old, fake_value(new), depth)


def remove_dead(graph: fx.Graph, owned: list) -> None:
    """Erase the old site's nodes (even those FX deems impure, like SDPA with its dropout seed: they are ours
    and dead), then any pure producer that only they read."""
    order = {node: index for index, node in enumerate(graph.nodes)}
    work = []
    for node in sorted(set(owned), key=lambda n: order.get(n, -1), reverse=True):
        if getattr(node, "_erased", False) or node.users or node.op != "call_function":
            continue
        work.extend(node.all_input_nodes)
        graph.erase_node(node)
    while work:
        node = work.pop()
        if getattr(node, "_erased", False) or node.op != "call_function" or node.users or node.is_impure():
            continue
        work.extend(node.all_input_nodes)
        graph.erase_node(node)

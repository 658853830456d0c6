"""Op calls whose kernels Inductor can launch itself, replaced in the graph by those launches.

To Inductor, glacompiler.attention_with_kvcache is an opaque custom op: its C++ wrapper calls it through the
dispatcher into our Python (the prepared call's key, allocations, the launcher), about 40 us of host time a
call on an H200's host where the kernel launches themselves cost a few. Where a call's kernel family is plain
Triton (KernelFamily.launches_in_graph: the portable kernels) and its sizes and strides are concrete, the
call's launch plan (the one the op would run: same family, config, stages and kernels) is traced with the
graph's fake values instead: its buffers become allocations of the graph, its launches user-defined Triton
kernel nodes (torch.library.wrap_triton), which Inductor compiles with the graph and launches from its own
wrapper. The shared mask_key_range likewise. Calls left as they are keep the op: Hopper latent kernels (Gluon,
which Inductor cannot launch), symbolic sizes, CPU tensors, and plans whose launches would write a tensor they
did not allocate (the mutation analysis Inductor relies on saw more writes than the kernels make)."""
from __future__ import annotations

import logging
import operator
from typing import Optional

import torch
from torch import fx
from torch.fx.operator_schemas import normalize_function

from ...kernels import choose_family
from ...kernels.common.mask_range import MaskKeyRangeLaunch, mask_as_kernel_operand
from ...kernels.common.triton_launch import graph_launches
from ...op.dispatch import choose_config, validated_call
from ...op.prepared import PreparedCall
from ..trace.sizes import is_concrete
from .emit import graph_fake_mode

LOGGER = logging.getLogger("glacompiler")
ATTENTION = torch.ops.glacompiler.attention_with_kvcache.default
MASK_RANGE = torch.ops.glacompiler.mask_key_range.default
LAUNCHED_CALL = "glacompiler_launched_call"  # node meta: (op name, replaced call's node name)
# The op's arguments, in schema order, that take tensors (the rest are scalars).
_ATTENTION_TENSORS = ("q", "k_cache", "v_cache", "q_rope", "k_rope_cache", "cache_seqlens", "page_table",
                      "attn_mask", "kv_range", "alibi_slopes", "sinks")
_ALLOCATIONS = {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default,
                torch.ops.aten.new_empty.default, torch.ops.aten.new_empty_strided.default}


def _value(argument):
    return argument.meta.get("val") if isinstance(argument, fx.Node) else argument


def _concrete_cuda(value) -> bool:
    return (value.device.type == "cuda" and all(is_concrete(size) for size in value.shape)
            and all(is_concrete(stride) for stride in value.stride()) and is_concrete(value.storage_offset()))


def _arguments(node: fx.Node) -> Optional[dict]:
    """The call's arguments by name (defaults filled in), or None where a tensor is not a concrete CUDA one."""
    normalized = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
    if normalized is None:
        return None
    arguments = dict(normalized.kwargs)
    for name, argument in arguments.items():
        value = _value(argument)
        if isinstance(value, torch.Tensor):
            if not _concrete_cuda(value):
                return None
        elif isinstance(argument, fx.Node):
            return None  # a symbolic scalar
    return arguments


def _attention_plan(values: dict):
    """The PreparedCall the op would make for these (fake) values, or None where its family's kernels cannot be
    launched by a graph (or the batch is empty)."""
    window = (values["window_left"], values["window_right"])
    spec, shape, call, copy_seqlens, copy_page_table = validated_call(
        values["q"], values["k_cache"], values["v_cache"], values["q_rope"], values["k_rope_cache"],
        values["cache_seqlens"], values["page_table"], values["attn_mask"], values["softmax_scale"],
        values["causal"], values["kv_range"], values["softcap"], values["alibi_slopes"], values["sinks"], window)
    if shape.batch == 0:
        return None
    family = choose_family(spec, shape, call)
    if family is None or not family.launches_in_graph:
        return None
    config = choose_config(family, spec, shape, call.q.device, values["num_splits"])
    return PreparedCall(shape, family.prepare(call, spec, shape, config), copy_seqlens, copy_page_table)


def _traced(function, inputs: list, fake_mode) -> fx.GraphModule:
    from torch.fx.experimental.proxy_tensor import make_fx

    with fake_mode, graph_launches():
        return make_fx(torch.func.functionalize(function, remove="mutations"))(*inputs)


def _attention_launches(values: dict, fake_mode) -> Optional[tuple]:
    """(traced launches, the tensor argument names they take in order), or None (the op stays)."""
    prepared = _attention_plan(values)
    if prepared is None:
        return None
    names = [name for name in _ATTENTION_TENSORS if values[name] is not None]

    def run(*tensors):
        given = dict(zip(names, tensors))
        return prepared.run(*(given.get(name) for name in _ATTENTION_TENSORS))

    return _traced(run, [values[name] for name in names], fake_mode), names


def _mask_range_launches(values: dict, fake_mode) -> Optional[tuple]:
    mask = mask_as_kernel_operand(values["attn_mask"])
    batch, capacity = values["batch"], values["capacity"]
    if batch == 0:
        return None
    launch = MaskKeyRangeLaunch(mask, batch, capacity, values["attn_mask"].dtype == torch.bool)
    return _traced(launch, [values["attn_mask"]], fake_mode), ["attn_mask"]


def _is_launch(node: fx.Node) -> bool:
    return node.op == "call_function" and "tensors_to_clone" in node.kwargs


def writes_only_own_buffers(traced: fx.GraphModule) -> bool:
    """Whether the traced launches write (by Inductor's analysis of the kernels: the tensors it clones) only
    tensors the trace allocated, and each writes something the result reads. A write the analysis could not rule
    out on an input would copy that input every step; a launch it found writing nothing would be dropped."""
    own = set()  # allocations, their views, and launches' results in them
    for node in traced.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target in _ALLOCATIONS:
            own.add(node)
        elif _is_launch(node):
            if not node.users or not all(node.kwargs["kwargs"].get(name) in own
                                         for name in node.kwargs["tensors_to_clone"]):
                return False
        elif node.target is operator.getitem and _is_launch(node.args[0]):
            if node.args[0].kwargs["kwargs"].get(node.args[1]) in own:
                own.add(node)
        elif node.args and node.args[0] in own:  # a view or a copy of our own
            own.add(node)
    return True


def _inline(graph: fx.Graph, node: fx.Node, traced: fx.GraphModule, inputs: list) -> None:
    """The traced launches in place of the op call `node` (its inputs: the graph's nodes for the placeholders)."""
    copied = dict(zip([n for n in traced.graph.nodes if n.op == "placeholder"], inputs))
    with graph.inserting_before(node):
        result = graph.graph_copy(traced.graph, copied)
    stack_trace = node.meta.get("stack_trace")
    for traced_node, created in copied.items():
        if traced_node.op == "call_function":
            # Which op call a node replaces (the op's name and the call's node name), for tests and reports; the
            # stack trace points Inductor's provenance at the user's attention.
            created.meta[LAUNCHED_CALL] = (node.target.overloadpacket.__name__, node.name)
            if stack_trace is not None:
                created.meta["stack_trace"] = stack_trace
    if node.target is ATTENTION:
        for user in list(node.users):  # (out, lse): the rewrite reads them by index
            user.replace_all_uses_with(result[user.args[1]])
            graph.erase_node(user)
    else:
        node.replace_all_uses_with(result)
    graph.erase_node(node)


def launch_in_graph(graph: fx.Graph) -> int:
    """Replace every op call of the graph whose kernels Inductor can launch by its traced launches; returns how
    many were replaced. Calls it cannot replace keep the op (see the module docstring)."""
    fake_mode = None
    replaced = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (ATTENTION, MASK_RANGE):
            continue
        arguments = _arguments(node)
        if arguments is None:
            continue
        if fake_mode is None:
            fake_mode = graph_fake_mode(graph)
        values = {name: _value(argument) for name, argument in arguments.items()}
        try:  # (nothing in the graph has changed yet: on an error the call keeps the op)
            planned = (_attention_launches if node.target is ATTENTION else _mask_range_launches)(values, fake_mode)
        except Exception as error:
            from ..graph_pass import strict_mode  # (the pass imports this module)

            if strict_mode():
                raise
            LOGGER.warning("glacompiler: %s kept as an op call (tracing its launches failed: %r)", node, error)
            continue
        if planned is None:
            continue
        traced, names = planned
        if not writes_only_own_buffers(traced):
            LOGGER.info("%s: kept as an op call (the kernels' writes could not be confined to their own buffers)",
                        node)
            continue
        _inline(graph, node, traced, [arguments[name] for name in names])
        replaced += 1
    return replaced

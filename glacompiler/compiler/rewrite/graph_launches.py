"""Op calls whose kernels Inductor can launch itself, replaced in the graph by those launches.

To Inductor, glacompiler.attention_with_kvcache is an opaque custom op: its C++ wrapper calls it through the
dispatcher into our Python (the prepared call's key, allocations, the launcher), about 40 us of host time a
call on an H200's host where the kernel launches themselves cost a few. Where a call's kernel family is plain
Triton (KernelFamily.launches_in_graph: the portable kernels) and its sizes and strides are concrete, the
call's launch plan (the one the op would run: same family, config, stages and kernels) is traced with the
graph's fake values instead: its buffers become allocations of the graph, its launches user-defined Triton
kernel nodes (torch.library.wrap_triton), which Inductor compiles with the graph and launches from its own
wrapper. The shared mask_key_range likewise. A call whose family Inductor cannot launch but whose plan launches
into given buffers (the Hopper latent kernels: Gluon) is traced the same way but for that one launch, which
becomes a call of glacompiler::attention_into (op/into_buffers.py): the graph allocates the buffers, reduces a
mask's key range and launches the split combine itself, and the op's Python is left the kernel's launch alone.
Calls left as they are keep the op: symbolic sizes, CPU tensors, and plans whose launches would write a tensor they
did not allocate (the mutation analysis Inductor relies on saw more writes than the kernels make).

A Hopper latent call may instead be planned on the portable kernels and launched by the graph, where it has at
most `latent_rows_in_graph` query rows per latent head (heads per latent head x query length; 0: never) and at
most LATENT_CACHE_BYTES_IN_GRAPH of cache that the call can address (batch x capacity; paged: page-table width x
page size per sequence, not the page pool). That trades device time for host time: the op call it removes costs
40-170 us of host time, which a step without CUDA graphs waits for, and at 16 heads the portable kernel took
1.05-1.23x the Hopper kernel's time on an H200 (7-17 us more), at 128 heads 2.1x (benchmarks/RESULTS.md). The cache
bound is where the two meet: a site addressing 1 GiB reads for about 250 us on an H200, and 5-23% of that is
13-58 us, the order of the op call's host time; above it the faster kernel is kept. Since the portable heuristic
reads latents of 256 in 64-key blocks at few rows (portable/config.py latent_block_n) it matches the Hopper kernel
at bench_backend.py's GLA-2 site (B64 S8K, 8 rows a latent head: 145.7 us against 149.3 on an H200). That model
(8 sites of 576 MiB, freezing) without CUDA graphs then took 1.936-1.954 ms a step launched by the graph, 2.168 ms with
32-key blocks, and with op calls 2.60 ms on a slow host, 1.97 ms on a fast one (its graphed step 1.75-1.86 ms;
benchmarks/RESULTS.md). Launched by the graph the step moves less with the host. The backend asks for
LATENT_ROWS_IN_GRAPH rows in graphs that CUDA graphs will not replay (its latent_in_graph). These bounds were set
against the Hopper site's op call; through attention_into that site costs less host time, and they have not been
measured against it yet.
"""
from __future__ import annotations

import logging
import operator
from typing import Optional

import torch
from torch import fx
from torch._higher_order_ops.triton_kernel_wrap import triton_kernel_wrapper_functional
from torch.fx.operator_schemas import normalize_function

from ...kernels.common.interpreter import triton_interpreter_enabled
from ...kernels.common.mask_range import MaskKeyRangeLaunch, mask_as_kernel_operand
from ...kernels.common.triton_launch import traced_launches
from ...op.into_buffers import INTO_ARGUMENTS, traced_call_into
from ...op.prepared import PreparedCall, prepare_call
from ...spec import cache_bytes
from ..trace.sizes import is_concrete
from .emit import graph_fake_mode, record_input_values

LOGGER = logging.getLogger("glacompiler")
ATTENTION = torch.ops.glacompiler.attention_with_kvcache.default
MASK_RANGE = torch.ops.glacompiler.mask_key_range.default
LAUNCHED_CALL = "glacompiler_launched_call"  # node meta: (op name, replaced call's node name)
# The op's tensor arguments in schema order: PreparedCall.run's parameters (tests/test_graph_launches.py checks).
ATTENTION_TENSORS = tuple(a.name for a in ATTENTION._schema.arguments if str(a.type) in ("Tensor", "Optional[Tensor]"))
_ALLOCATIONS = {torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default,
                torch.ops.aten.new_empty.default, torch.ops.aten.new_empty_strided.default,
                torch.ops.aten.full.default}
_LAUNCH = triton_kernel_wrapper_functional
ATTENTION_INTO = torch.ops.glacompiler.attention_into.default
# An op writing its arguments (attention_into) as the functional trace holds it: v2, Inductor's default (with its
# enable_auto_functionalized_v2 off the trace holds v1, which the guard does not take: the op call stays).
_WRITE_INTO = torch.ops.higher_order.auto_functionalized_v2
# Query rows per latent head (query heads of a group x query length), and the bytes of cache a call can address,
# up to which the backend launches a latent call on the portable kernels (see the module docstring).
LATENT_ROWS_IN_GRAPH = 16
LATENT_CACHE_BYTES_IN_GRAPH = 1 << 30


def latent_in_graph_rule(latent_rows_in_graph: int):
    """(spec, shape) -> whether a call whose family a graph cannot launch is planned on one it can."""
    def wanted(spec, shape) -> bool:
        rows = spec.group_size * shape.query_len
        return rows <= latent_rows_in_graph and cache_bytes(spec, shape) <= LATENT_CACHE_BYTES_IN_GRAPH
    return wanted


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


class _WritesAnInput(Exception):
    """A traced plan wrote one of its inputs (data or metadata): a write the functional graph would drop."""


def _writing_no_input(function):
    """function, raising _WritesAnInput after it where it wrote one of its (functional tensor) inputs."""
    from torch._subclasses.functional_tensor import FunctionalTensor

    def checked(*inputs):
        outputs = function(*inputs)
        for tensor in inputs:
            if isinstance(tensor, FunctionalTensor):
                torch._sync(tensor)
                if (torch._functionalize_has_data_mutation(tensor.elem)
                        or torch._functionalize_has_metadata_mutation(tensor.elem)):
                    raise _WritesAnInput
        return outputs
    return checked


def _traced(function, inputs: list, fake_mode) -> Optional[fx.GraphModule]:
    """The launches `function` makes, as a functional graph, or None where it writes one of its inputs (the graph
    would drop that write): AOTAutograd's functionalization (FunctionalTensorMode), which makes a launch a functional
    node and an op writing its arguments (attention_into) an auto_functionalized_v2 node; Inductor reinplaces both
    on the buffers the trace allocated."""
    from torch._subclasses.functional_tensor import FunctionalTensorMode, dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    try:
        with fake_mode, traced_launches():
            return make_fx(dispatch_functionalize(_writing_no_input(function), FunctionalTensorMode()))(*inputs)
    except _WritesAnInput:
        return None


def _attention_launches(values: dict, fake_mode, latent_rows_in_graph: int) -> Optional[tuple]:
    """(traced launches, the tensor argument names they take in order), or None (the op stays): the plan is the
    one the op makes for these values (op/prepared.py), or the portable one for a latent call of at most
    latent_rows_in_graph rows, traced."""
    prepared: Optional[PreparedCall] = prepare_call(
        *(values[name] for name in ("q", "k_cache", "v_cache", "q_rope", "k_rope_cache", "cache_seqlens",
                                    "page_table", "attn_mask", "softmax_scale", "causal", "num_splits", "kv_range",
                                    "softcap", "alibi_slopes", "sinks")),
        (values["window_left"], values["window_right"]), traced=True,
        graph_family_wanted=latent_in_graph_rule(latent_rows_in_graph))
    if prepared is None:
        return None
    names = [name for name in ATTENTION_TENSORS if values[name] is not None]

    def run(*tensors):
        given = dict(zip(names, tensors))
        if prepared.into_buffers:  # (a family the graph cannot launch: its kernels into the graph's buffers)
            return traced_call_into(prepared, {name: given.get(name) if name in ATTENTION_TENSORS else values[name]
                                               for name in INTO_ARGUMENTS})
        return prepared.run(*(given.get(name) for name in ATTENTION_TENSORS))

    traced = _traced(run, [values[name] for name in names], fake_mode)
    return None if traced is None else (traced, names)


def _mask_range_launches(values: dict, fake_mode) -> Optional[tuple]:
    batch, capacity = values["batch"], values["capacity"]
    if batch == 0:
        return None
    launch = MaskKeyRangeLaunch(mask_as_kernel_operand(values["attn_mask"]), batch, capacity,
                                values["attn_mask"].dtype == torch.bool)
    traced = _traced(launch, [values["attn_mask"]], fake_mode)
    return None if traced is None else (traced, ["attn_mask"])


def _is_view(node: fx.Node) -> bool:
    schema = getattr(node.target, "_schema", None)
    return schema is not None and any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)


def _writes_own_buffers_into(node: fx.Node, own: set) -> bool:
    """An attention_into call (auto_functionalized) writing only buffers the trace allocated, its results read."""
    return (node.args[:1] == (ATTENTION_INTO,) and bool(node.users)
            and all(base in own for base in node.kwargs.get("_all_bases", (None,))))


def writes_only_own_buffers(traced: fx.GraphModule) -> bool:
    """Whether the trace holds only what a launch plan makes (allocations, views, the functional launches and their
    results, attention_into's functional form, pure ops), each launch writing (by Inductor's analysis of the
    kernel: the tensors it clones) and each attention_into writing only tensors the trace allocated, and each
    read by something. A write the analysis could not rule out on an input would copy that input every step; a
    launch it found writing nothing would be dropped; anything mutable or unexpected keeps the op (a plan's own
    write to an input, which the functional trace would drop, is refused before: _traced)."""
    own = set()  # allocations, their views, and launches' results in them
    for node in traced.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op != "call_function":
            return False  # get_attr (a constant) or a module call: not a plan's
        if node.target in _ALLOCATIONS:
            own.add(node)
        elif node.target is _LAUNCH:
            if not node.users or not all(node.kwargs["kwargs"].get(name) in own
                                         for name in node.kwargs["tensors_to_clone"]):
                return False
        elif node.target is _WRITE_INTO:
            if not _writes_own_buffers_into(node, own):
                return False
        elif node.target is operator.getitem:
            source = node.args[0]
            if (source.target is _LAUNCH and source.kwargs["kwargs"].get(node.args[1]) in own) or source in own:
                own.add(node)
        elif isinstance(node.target, torch._ops.OpOverload) and not node.target._schema.is_mutable:
            if _is_view(node) and node.args and node.args[0] in own:
                own.add(node)
        else:
            return False  # a mutation, or a higher-order op other than the functional launch
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
            # stack trace points Inductor's provenance at the user's attention, not at this package.
            created.meta[LAUNCHED_CALL] = (node.target.overloadpacket.__name__, node.name)
            record_input_values(created)
            created.meta.pop("stack_trace", None)
            if stack_trace is not None:
                created.meta["stack_trace"] = stack_trace
    if node.target is ATTENTION:
        for user in list(node.users):  # (out, lse): read by index
            user.replace_all_uses_with(result[user.args[1]])
            graph.erase_node(user)
    else:
        node.replace_all_uses_with(result)
    graph.erase_node(node)


def _planned_launches(node: fx.Node, arguments: dict, fake_mode, latent_rows_in_graph: int) -> Optional[tuple]:
    """(traced launches, argument names) for an op call whose launches may replace it, else None."""
    if node.target is ATTENTION and any(user.target is not operator.getitem for user in node.users):
        return None  # (the pass reads the outputs by index; anything else keeps the op)
    values = {name: _value(argument) for name, argument in arguments.items()}
    if node.target is ATTENTION:
        planned = _attention_launches(values, fake_mode, latent_rows_in_graph)
    else:
        planned = _mask_range_launches(values, fake_mode)
    if planned is not None and not writes_only_own_buffers(planned[0]):
        LOGGER.info("%s: kept as an op call (its launches would write tensors they did not allocate)", node)
        return None
    return planned


def replace_op_calls_with_launches(graph: fx.Graph, latent_rows_in_graph: int = 0) -> int:
    """Replace every op call of the graph whose kernels Inductor can launch by its traced launches; returns how
    many were replaced. Calls it cannot replace keep the op; Hopper latent calls of at most latent_rows_in_graph
    query rows per latent head are planned on the portable kernels instead (see the module docstring)."""
    if triton_interpreter_enabled():  # the interpreter's kernels run where they are called: nothing to trace
        return 0
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
        try:  # (the graph is unchanged until _inline: on an error the call keeps the op)
            planned = _planned_launches(node, arguments, fake_mode, latent_rows_in_graph)
        except Exception as error:
            from ..graph_pass import strict_mode  # (the pass imports this module)

            if strict_mode():
                raise
            LOGGER.warning("glacompiler: %s kept as an op call (tracing its launches failed: %r)", node, error)
            continue
        if planned is None:
            continue
        traced, names = planned
        _inline(graph, node, traced, [arguments[name] for name in names])
        replaced += 1
    return replaced

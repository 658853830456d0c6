"""Op calls replaced by the launches of their kernels (glacompiler/compiler/rewrite/graph_launches.py), on the CPU
machine: graphs of fake CUDA tensors, the GPU's queries (multiprocessors, tables) and Inductor's analysis of
which tensors a kernel writes (it compiles the kernel for the GPU) stood in for. That the compiled graphs run
and give the op's results is tests/test_graph_launches_gpu.py's.

tests/test_graph_launches.py runs this file in a process of its own: a process that has loaded the kernels under
the Triton interpreter (TRITON_INTERPRET=1, as the interpreter tests do) keeps them in that form."""
import operator
import warnings

import pytest
import torch
import triton
from torch import fx
from torch._higher_order_ops import triton_kernel_wrap
from torch._subclasses.fake_tensor import FakeTensorMode

import glacompiler
from glacompiler.compiler.graph_pass import AttentionRewritePass
from glacompiler.compiler.rewrite import graph_launches
from glacompiler.compiler.rewrite.graph_launches import (ATTENTION, ATTENTION_INTO, ATTENTION_TENSORS, LAUNCHED_CALL,
                                                         MASK_RANGE, replace_op_calls_with_launches,
                                                         writes_only_own_buffers)
from glacompiler.kernels.common.triton_launch import PreparedLaunch
from glacompiler.op import dispatch, into_buffers, prepared
from glacompiler.op.into_buffers import run_into
from glacompiler.op.prepared import PreparedCall, clear_prepared_calls, run_prepared
from glacompiler.op.validation import set_debug_checks
from glacompiler.problems import make_decode_problem
from glacompiler.spec import AttentionSpec
from into_buffers_helpers import into_arguments, split_buffers

# What the kernels write, by parameter name: the attention kernel and the combine OUT and LSE, the mask range
# kernel RANGE.
KERNEL_WRITES = ("OUT", "LSE", "RANGE")


@pytest.fixture
def gpu_stand_ins(monkeypatch):
    """An H200's 132 multiprocessors, no tuned table, and Inductor's kernel analysis as `writes` says."""
    monkeypatch.setattr(dispatch, "device_multiprocessors", lambda device: 132)
    monkeypatch.setattr(dispatch, "device_card", lambda device: "NVIDIA H200")
    monkeypatch.setattr(dispatch, "tuned_config", lambda *args: None)
    writes = {"names": KERNEL_WRITES}
    monkeypatch.setattr(triton_kernel_wrap, "get_mutated_tensors",
                        lambda kernel_idx, constant_args_idx, kwargs, tma: [n for n in kwargs if n in writes["names"]])
    return writes


def add_placeholders(graph: fx.Graph, values: dict) -> list:
    """A placeholder per value (by name), each with its fake value."""
    nodes = []
    for name, value in values.items():
        node = graph.placeholder(name)
        node.meta["val"] = value
        nodes.append(node)
    return nodes


def add_call(graph: fx.Graph, mode: FakeTensorMode, target, args: tuple) -> fx.Node:
    """graph.call_function(target, args), its fake value computed from its arguments' values."""
    node = graph.call_function(target, args)
    with mode:
        node.meta["val"] = target(*(a.meta["val"] if isinstance(a, fx.Node) else a for a in args))
    return node


def output_first(graph: fx.Graph, call: fx.Node) -> fx.Graph:
    """The graph with the op call's first result (out) as its output."""
    out = graph.call_function(operator.getitem, (call, 0))
    out.meta["val"] = call.meta["val"][0]
    graph.output(out)
    return graph


def decode_graph(batch=2, capacity=128, device="cuda", with_mask=True, shared_range=True):
    """placeholders q [B, 1, 8, 64], k/v caches [B, S, 2, 64] (fp16) and a bool mask; the mask's shared key range
    and the op call as the pass emits them; the output."""
    mode = FakeTensorMode()
    with mode:
        values = dict(q=torch.empty(batch, 1, 8, 64, device=device, dtype=torch.float16),
                      k=torch.empty(batch, capacity, 2, 64, device=device, dtype=torch.float16),
                      v=torch.empty(batch, capacity, 2, 64, device=device, dtype=torch.float16),
                      m=torch.empty(batch, 1, 1, capacity, device=device, dtype=torch.bool))
    graph = fx.Graph()
    q_node, k_node, v_node, mask_node = add_placeholders(graph, values)
    key_range = None
    if with_mask and shared_range:
        key_range = add_call(graph, mode, MASK_RANGE, (mask_node, batch, capacity))
    call = add_call(graph, mode, ATTENTION, (q_node, k_node, v_node, None, None, None, None,
                                             mask_node if with_mask else None, 0.125, False, 0, key_range))
    return output_first(graph, call)


def launches(graph):
    return [node for node in graph.nodes if node.op == "call_function" and "tensors_to_clone" in node.kwargs]


def kernel_name(launch):
    kernel = triton_kernel_wrap.kernel_side_table.get_kernel(launch.kwargs["kernel_idx"])
    while not hasattr(kernel, "fn") or hasattr(kernel.fn, "fn"):  # the autotuner wrapping warps and stages
        kernel = kernel.fn
    return kernel.fn.__name__


def test_masked_call_becomes_its_launches(gpu_stand_ins):
    graph = decode_graph()
    assert replace_op_calls_with_launches(graph) == 2
    graph.lint()
    assert not [n for n in graph.nodes if n.target in (ATTENTION, MASK_RANGE)]
    names = [kernel_name(launch) for launch in launches(graph)]
    # The range once, then the attention kernel's two passes (dense masks, then the others), with one split.
    assert names == ["mask_key_range_kernel", "decode_attention_split_kernel", "decode_attention_split_kernel"]
    range_launch, dense_pass, sparse_pass = launches(graph)
    assert [dense_pass.kwargs["kwargs"]["DENSE_PASS"], sparse_pass.kwargs["kwargs"]["DENSE_PASS"]] == [True, False]
    assert range_launch.kwargs["tensors_to_clone"] == ["RANGE"]
    assert sorted(dense_pass.kwargs["tensors_to_clone"]) == ["LSE", "OUT"]
    # Each pass reads the caches as they are (no copies) and the second pass writes into the first one's output.
    assert dense_pass.kwargs["kwargs"]["K"].name == "k" and dense_pass.kwargs["kwargs"]["V"].name == "v"
    assert sparse_pass.kwargs["kwargs"]["OUT"].args == (dense_pass, "OUT")
    output = graph.output_node().args[0]
    assert output.args == (sparse_pass, "OUT")
    assert all(n.meta[LAUNCHED_CALL][0] in ("attention_with_kvcache", "mask_key_range")
               for n in graph.nodes if n.op == "call_function")


def test_splits_launch_the_combine(gpu_stand_ins):
    graph = decode_graph(batch=1, capacity=8192, with_mask=False)
    assert replace_op_calls_with_launches(graph) == 1
    names = [kernel_name(launch) for launch in launches(graph)]
    assert names == ["decode_attention_split_kernel", "combine_splits_kernel"]
    split_launch, combine = launches(graph)
    assert split_launch.kwargs["kwargs"]["num_splits"] > 1
    assert combine.kwargs["kwargs"]["PART_OUT"].args == (split_launch, "OUT")
    assert sorted(combine.kwargs["tensors_to_clone"]) == ["LSE", "OUT"]
    assert graph.output_node().args[0].args == (combine, "OUT")


def test_a_write_to_an_input_keeps_the_op(gpu_stand_ins):
    """Where the analysis cannot rule out a write to the cache, the launches would copy it every step."""
    gpu_stand_ins["names"] = KERNEL_WRITES + ("K",)
    graph = decode_graph()
    assert replace_op_calls_with_launches(graph) == 1  # the mask range still
    assert [n.target for n in graph.nodes if n.target in (ATTENTION, MASK_RANGE)] == [ATTENTION]


def test_a_launch_found_writing_nothing_keeps_the_op(gpu_stand_ins):
    gpu_stand_ins["names"] = ()
    graph = decode_graph()
    assert replace_op_calls_with_launches(graph) == 0
    assert [n.target for n in graph.nodes if n.target in (ATTENTION, MASK_RANGE)] == [MASK_RANGE, ATTENTION]


def test_families_no_graph_launches_and_cpu_tensors_keep_the_op(gpu_stand_ins, monkeypatch):
    """A family whose kernels the graph cannot launch and whose plans do not launch into given buffers keeps the op
    call (and so does a CPU call); the plan is not even made."""
    from glacompiler.kernels import PORTABLE

    graph = decode_graph(device="cpu")
    assert replace_op_calls_with_launches(graph) == 0

    class NoGraphFamily(type(PORTABLE)):
        launches_in_graph = launches_into_buffers = False

        def prepare(self, *args):
            raise AssertionError("a plan made for a call that keeps the op")

    monkeypatch.setattr(dispatch, "choose_family", lambda *args: NoGraphFamily())
    monkeypatch.setenv("GLACOMPILER_STRICT", "1")
    graph = decode_graph(with_mask=False)
    assert replace_op_calls_with_launches(graph) == 0
    assert [n.target for n in graph.nodes if n.target is ATTENTION] == [ATTENTION]


def latent_decode_graph(batch=2, capacity=128, heads=16, query_len=1, num_splits=0, with_mask=False,
                        softmax_scale=0.07):
    """An MLA decode site as the pass emits it (16 heads over one 512-wide latent, a 64-wide rope key, bf16,
    lengths, or a bool mask without its range): placeholders and the op call, its output."""
    mode = FakeTensorMode()
    with mode:
        values = dict(q=torch.empty(batch, query_len, heads, 512, device="cuda", dtype=torch.bfloat16),
                      q_rope=torch.empty(batch, query_len, heads, 64, device="cuda", dtype=torch.bfloat16),
                      k_cache=torch.empty(batch, capacity, 1, 512, device="cuda", dtype=torch.bfloat16),
                      k_rope_cache=torch.empty(batch, capacity, 64, device="cuda", dtype=torch.bfloat16),
                      cache_seqlens=torch.full((batch,), capacity, device="cuda", dtype=torch.int32))
        if with_mask:
            values["attn_mask"] = torch.empty(batch, 1, 1, capacity, device="cuda", dtype=torch.bool)
    graph = fx.Graph()
    q, q_rope, k_cache, k_rope_cache, cache_seqlens, *mask = add_placeholders(graph, values)
    call = add_call(graph, mode, ATTENTION, (q, k_cache, None, q_rope, k_rope_cache, None if mask else cache_seqlens,
                                             None, mask[0] if mask else None, softmax_scale, True, num_splits))
    return output_first(graph, call)


def into_calls(graph):
    """The graph's attention_into calls, in their functional form (auto_functionalized_v2)."""
    return [n for n in graph.nodes if n.op == "call_function" and n.args[:1] == (ATTENTION_INTO,)]


def test_a_hopper_latent_site_launches_into_the_graphs_buffers_without_reading_addresses(gpu_stand_ins, monkeypatch):
    """A Hopper latent site (Gluon kernels, which Inductor cannot launch): the graph allocates the split buffers and
    the outputs, calls attention_into for the kernel and launches the combine itself. The family's layout checks
    run on the graph's fake tensors, which have no address (torch 2.11 raises on their data_ptr, 2.13 warns and
    gives 0): they count as aligned, and no failed trace is reported (GLACOMPILER_STRICT=1 would raise it)."""
    from torch._subclasses.fake_tensor import is_fake

    from glacompiler.kernels.latent_hopper import support

    assert support.gluon_available()  # (Triton 3.6 on, as the package requires)
    real_data_ptr = torch.Tensor.data_ptr

    def data_ptr_as_torch_2_11(tensor):
        if is_fake(tensor):
            raise RuntimeError("Cannot access data pointer of Tensor (e.g. FakeTensor, FunctionalTensor)")  # 2.11's
        return real_data_ptr(tensor)

    monkeypatch.setattr(support, "_is_sm90", lambda device_index: True)
    monkeypatch.setattr(torch.Tensor, "data_ptr", data_ptr_as_torch_2_11)
    monkeypatch.setenv("GLACOMPILER_STRICT", "1")
    graph = latent_decode_graph(batch=2, capacity=8192, num_splits=4)
    assert replace_op_calls_with_launches(graph) == 1
    graph.lint()
    assert not [n for n in graph.nodes if n.target is ATTENTION]
    [into] = into_calls(graph)
    bases = into.kwargs["_all_bases"]
    assert [base.target for base in bases] == [torch.ops.aten.new_empty.default] * 2
    assert [list(base.meta["val"].shape) for base in bases] == [[2, 1, 16, 4, 512], [2, 1, 16, 4]]
    assert into.kwargs["k_cache"].name == "k_cache" and into.kwargs["kv_range"] is None
    assert isinstance(into.kwargs["plan_key"], int) and 0 <= into.kwargs["plan_key"] < 2 ** 63
    # Its fake arguments as Inductor's eager_input_vals: the op call it decomposes into gets exactly those strides,
    # the ones the plan key holds.
    _, fake_kwargs = into.meta["eager_input_vals"]
    assert fake_kwargs["q"] is into.kwargs["q"].meta["val"]
    [combine] = launches(graph)  # the combine reads the buffers as attention_into wrote them
    assert kernel_name(combine) == "combine_splits_kernel"
    assert [combine.kwargs["kwargs"][name].args for name in ("PART_OUT", "PART_LSE")] == [(into, 1), (into, 2)]
    assert graph.output_node().args[0].args == (combine, "OUT")


def test_one_split_writes_the_outputs_and_a_mask_gets_its_range_launched(gpu_stand_ins, monkeypatch):
    """With one split attention_into writes the op's outputs (no combine); a masked call without the step's range
    gets it from a launch of the graph, not from attention_into's Python."""
    from glacompiler.kernels.latent_hopper import support

    monkeypatch.setattr(support, "_is_sm90", lambda device_index: True)
    graph = latent_decode_graph(num_splits=1, with_mask=True)
    assert replace_op_calls_with_launches(graph) == 1
    [into] = into_calls(graph)
    assert [list(base.meta["val"].shape) for base in into.kwargs["_all_bases"]] == [[2, 1, 16, 512], [2, 1, 16]]
    [range_launch] = launches(graph)
    assert kernel_name(range_launch) == "mask_key_range_kernel"
    assert into.kwargs["kv_range"].args == (range_launch, "RANGE")
    assert into.kwargs["attn_mask"].name == "attn_mask"
    assert graph.output_node().args[0].args == (into, 1)


def plan_key_of(graph) -> int:
    replace_op_calls_with_launches(graph)
    [into] = into_calls(graph)
    return into.kwargs["plan_key"]


def test_the_plan_key_follows_the_call(gpu_stand_ins, monkeypatch):
    """The same call traced twice gets the same key (Inductor's cached graphs hold it); a scalar, a size or the split
    count (the buffers' shape) makes another."""
    from glacompiler.kernels.latent_hopper import support

    monkeypatch.setattr(support, "_is_sm90", lambda device_index: True)
    key = plan_key_of(latent_decode_graph(num_splits=2))
    assert plan_key_of(latent_decode_graph(num_splits=2)) == key
    others = [plan_key_of(latent_decode_graph(num_splits=3)), plan_key_of(latent_decode_graph(num_splits=2, batch=3)),
              plan_key_of(latent_decode_graph(num_splits=2, softmax_scale=0.08))]
    assert len({key, *others}) == 4


def traced_hopper_site(monkeypatch, **graph_options):
    """(the traced launches of a Hopper latent site, its attention_into node)."""
    from glacompiler.kernels.latent_hopper import support

    monkeypatch.setattr(support, "_is_sm90", lambda device_index: True)
    graph = latent_decode_graph(**graph_options)
    node = next(n for n in graph.nodes if n.target is ATTENTION)
    values = {name: graph_launches._value(a) for name, a in graph_launches._arguments(node).items()}
    traced, _ = graph_launches._attention_launches(values, graph_launches.graph_fake_mode(graph), 0)
    [into] = into_calls(traced.graph)
    return traced, into


@pytest.mark.parametrize("change", ["writes an input", "another op", "results unread"])
def test_the_guard_takes_attention_into_only_on_its_own_buffers(gpu_stand_ins, monkeypatch, change):
    """An attention_into writing a graph input (not a buffer the trace allocated), another op writing the buffers,
    or an attention_into whose results nothing reads keeps the op."""
    traced, into = traced_hopper_site(monkeypatch, num_splits=2)
    assert writes_only_own_buffers(traced)
    if change == "writes an input":
        q = next(n for n in traced.graph.nodes if n.op == "placeholder")
        into.kwargs = {**into.kwargs, "_all_bases": [q, into.kwargs["_all_bases"][1]]}
    elif change == "another op":
        into.args = (torch.ops.aten.add_.Tensor,)
    else:
        for user in list(into.users):
            user.replace_all_uses_with(into.kwargs["_all_bases"][0])
            traced.graph.erase_node(user)
    assert not writes_only_own_buffers(traced)


def test_a_plan_writing_its_input_is_not_traced():
    """The functional trace would drop a plan's write to one of its inputs: _traced refuses such a plan."""
    mode = FakeTensorMode()
    with mode:
        x = torch.empty(8)

    def writes_input(x):
        x.clamp_(max=5.0)
        return x.new_empty(8).copy_(x)

    def writes_own(x):
        out = x.new_empty(8)
        out.copy_(x).clamp_(max=5.0)
        return out

    assert graph_launches._traced(writes_input, [x], mode) is None
    assert graph_launches._traced(writes_own, [x], mode) is not None


@pytest.fixture
def on_sm90(gpu_stand_ins, monkeypatch):
    """gpu_stand_ins on an sm_90 device, where the Hopper latent family takes MLA calls."""
    from glacompiler.kernels.latent_hopper import support

    assert support.gluon_available()
    monkeypatch.setattr(support, "_is_sm90", lambda device_index: True)


@pytest.mark.parametrize("heads, query_len, latent_rows, launched", [
    (16, 1, 16, True),  # 16 rows per latent head, at most 16 asked for: the portable kernels
    (8, 2, 16, True),
    (8, 2, 0, False),  # 0 (latent_in_graph=False): the Hopper kernel, into the graph's buffers
    (16, 2, 16, False),  # 32 rows
    (128, 1, 16, False),
    (128, 1, 128, True),
])
def test_latent_sites_take_the_portable_kernels_by_rows(on_sm90, heads, query_len, latent_rows, launched):
    graph = latent_decode_graph(heads=heads, query_len=query_len)
    assert replace_op_calls_with_launches(graph, latent_rows) == 1
    graph.lint()
    assert not [n for n in graph.nodes if n.target is ATTENTION]
    names = {kernel_name(launch) for launch in launches(graph)}
    if launched:  # the portable plan, as the op would run it off Hopper: its split kernel and the combine
        assert not into_calls(graph) and "decode_attention_split_kernel" in names
        split_launch = next(n for n in launches(graph) if kernel_name(n) == "decode_attention_split_kernel")
        assert split_launch.kwargs["kwargs"]["K"].name == "k_cache"  # the latent cache as it is, read in place
    else:  # the Hopper kernel through attention_into, the combine (where it splits) launched by the graph
        assert len(into_calls(graph)) == 1 and names <= {"combine_splits_kernel"}


def test_a_latent_site_in_graph_takes_the_portable_config_with_the_calls_splits(on_sm90, monkeypatch):
    """The traced plan is the portable family's, with the config the op would choose for it (num_splits kept)."""
    from glacompiler.kernels import PORTABLE
    from glacompiler.kernels.latent_hopper import LATENT_HOPPER

    planned = []
    for family in (PORTABLE, LATENT_HOPPER):
        monkeypatch.setattr(type(family), "prepare",
                            lambda self, call, spec, shape, config, original=type(family).prepare:
                            planned.append((self.name, spec, shape, config)) or original(self, call, spec, shape, config))
    graph = latent_decode_graph(num_splits=3)
    assert replace_op_calls_with_launches(graph, 16) == 1
    [(name, spec, shape, config)] = planned
    assert name == PORTABLE.name and config == dispatch.choose_config(PORTABLE, spec, shape, torch.device("cuda"), 3)
    assert config.num_splits == 3


@pytest.mark.parametrize("latent_rows, portable", [(16, True), (0, False)])
def test_the_pass_hands_its_latent_rows_to_the_launches(on_sm90, latent_rows, portable):
    rewrite = AttentionRewritePass(graph_launches=True, latent_rows_in_graph=latent_rows)
    graph = latent_decode_graph()
    rewrite(graph)
    assert rewrite.launched_in_graph == 1
    assert len(into_calls(graph)) == int(not portable)


def test_the_latent_rule_follows_the_group_query_rows_and_cache_bytes():
    from glacompiler.compiler.rewrite.graph_launches import (LATENT_CACHE_BYTES_IN_GRAPH, LATENT_ROWS_IN_GRAPH,
                                                             latent_in_graph_rule)
    from glacompiler.spec import AttentionSpec, ProblemShape

    rule = latent_in_graph_rule(LATENT_ROWS_IN_GRAPH)

    def spec(group_size, latent_heads=1, latent_dim=512):
        return AttentionSpec.latent(group_size * latent_heads, latent_heads, latent_dim, 64)

    def shape(query_len, batch=4, capacity=4096, page_size=0):
        return ProblemShape(batch=batch, query_len=query_len, capacity=capacity, page_size=page_size)

    assert rule(spec(LATENT_ROWS_IN_GRAPH), shape(1)) and not rule(spec(LATENT_ROWS_IN_GRAPH + 1), shape(1))
    assert rule(spec(4), shape(4)) and not rule(spec(4), shape(5))
    assert not latent_in_graph_rule(0)(spec(1), shape(1))
    # The cache bound, at its edge: 448 + 64 bf16 elements make 1 KiB a token.
    tokens_in_bound = LATENT_CACHE_BYTES_IN_GRAPH // 1024
    assert rule(spec(16, latent_dim=448), shape(1, batch=1, capacity=tokens_in_bound))
    assert not rule(spec(16, latent_dim=448), shape(1, batch=1, capacity=tokens_in_bound + 1))
    assert rule(spec(16, latent_dim=448), shape(1, batch=8, capacity=tokens_in_bound // 8))  # the batch counts
    assert not rule(spec(16, latent_dim=448), shape(1, batch=8, capacity=tokens_in_bound // 8 + 1))
    # Paged: the capacity a sequence's page table can address (pages x page size), whatever the page size.
    assert rule(spec(16, latent_dim=448), shape(1, batch=8, capacity=tokens_in_bound // 8, page_size=64))
    assert not rule(spec(16, latent_dim=448), shape(1, batch=16, capacity=tokens_in_bound // 8, page_size=64))
    # DeepSeek-V3's widths, 512 + 64 a token: batch 128 at 4096 is 576 MiB, batch 256 1152 MiB.
    assert rule(spec(16), shape(1, batch=128, capacity=4096))
    assert not rule(spec(16), shape(1, batch=256, capacity=4096))
    # Two latent heads of 512 make 2 x 512 + 64 a token: batch 128 at 4096 is 1088 MiB.
    assert rule(spec(8), shape(1, batch=128, capacity=4096)) and not rule(spec(8, 2), shape(1, batch=128, capacity=4096))
    # bench_backend.py's GLA-2 (two latent heads of 256): batch 64 at 8192 is 576 MiB, launched by the graph.
    assert rule(spec(8, 2, latent_dim=256), shape(1, batch=64, capacity=8192))


def test_backend_option_and_the_cache_key():
    from glacompiler.compiler import backend as compiler_backend, gla_backend
    from glacompiler.compiler.torch_compile_backend import GlaBackend

    assert glacompiler.backend().graph_launches
    assert not glacompiler.backend(autotune=True).graph_launches  # tuning reaches the sites through the op
    assert glacompiler.backend(autotune=True, graph_launches=True).graph_launches
    with_launches = AttentionRewritePass(graph_launches=True).uuid()
    assert with_launches != AttentionRewritePass(graph_launches=False).uuid()
    assert "graph_launches=" in with_launches
    # On by default, including backend="gla" (the registered instance) and every way of making a backend.
    assert gla_backend.latent_in_graph and GlaBackend().latent_in_graph and compiler_backend().latent_in_graph
    assert glacompiler.backend().latent_in_graph and glacompiler.backend(latent_in_graph=True).latent_in_graph
    assert not glacompiler.backend(latent_in_graph=False).latent_in_graph
    assert not glacompiler.backend(latent_in_graph=0).latent_in_graph  # falsy, not only False
    uuids = {AttentionRewritePass(graph_launches=True, latent_rows_in_graph=rows).uuid() for rows in (0, 16, 128)}
    assert len(uuids) == 3


@pytest.mark.parametrize("cudagraphs, latent_in_graph, inductor_config, expected", [
    (False, False, None, 0), (False, True, None, 16), (False, None, None, 16), (True, True, None, 0),
    (True, None, None, 0),
    # CUDA graphs asked for through Inductor's own setting
    (False, True, {"triton.cudagraphs": True}, 0), (False, None, {"triton.cudagraphs": True}, 0)])
def test_the_backend_asks_for_latent_sites_in_graph_only_without_cuda_graphs(monkeypatch, cudagraphs,
                                                                            latent_in_graph, inductor_config, expected):
    from glacompiler.compiler import torch_compile_backend

    made = []

    class Recording(AttentionRewritePass):
        def __init__(self, *args, **kwargs):
            made.append(kwargs["latent_rows_in_graph"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch_compile_backend, "AttentionRewritePass", Recording)
    monkeypatch.setattr(torch_compile_backend.GlaBackend, "_records_key", staticmethod(lambda *args: None))
    monkeypatch.setattr(torch_compile_backend.GlaBackend, "_compile", staticmethod(lambda *args: "compiled"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backend = glacompiler.backend(cudagraphs=cudagraphs, latent_in_graph=latent_in_graph,
                                      inductor_config=inductor_config)
    told = [w for w in caught if "latent_in_graph" in str(w.message)]
    # asked for with CUDA graphs: ignored, and the user told; the default is quiet
    assert bool(told) == (cudagraphs and latent_in_graph is True)
    assert backend._compile_with_pass(None, [], backend.config_patches(), "graph") == "compiled"
    assert made == [expected]


def test_a_failed_trace_keeps_the_op(gpu_stand_ins, monkeypatch):
    def fail(values, fake_mode, latent_in_graph):
        raise RuntimeError("no trace")

    monkeypatch.setattr(graph_launches, "_attention_launches", fail)
    graph = decode_graph()
    assert replace_op_calls_with_launches(graph) == 1  # the mask range's launch still
    assert [n.target for n in graph.nodes if n.target is ATTENTION] == [ATTENTION]
    monkeypatch.setenv("GLACOMPILER_STRICT", "1")
    with pytest.raises(RuntimeError, match="no trace"):
        replace_op_calls_with_launches(decode_graph())


def test_inductor_failing_on_launches_recompiles_with_op_calls(monkeypatch):
    """The backend's fallback: a graph Inductor cannot compile with our launches in it is compiled with op calls."""
    from glacompiler.compiler.torch_compile_backend import GlaBackend

    compiled_with = []

    def compile_once(gm, example_inputs, patches, our_pass, records_key):
        compiled_with.append(our_pass.graph_launches)
        if our_pass.graph_launches:
            our_pass.launched_in_graph = 1
            raise RuntimeError("Inductor: no valid config")
        return "compiled"

    monkeypatch.setattr(GlaBackend, "_compile", staticmethod(compile_once))
    monkeypatch.setattr(GlaBackend, "_records_key", staticmethod(lambda *args: None))
    backend = glacompiler.backend()
    with pytest.warns(RuntimeWarning, match="compiling it again with op calls"):
        assert backend._compile_with_pass(None, [], {}, "graph 0") == "compiled"
    assert compiled_with == [True, False]
    # A C++ compile error of the wrapper the backend chose is retried with the Python wrapper, not here.
    compiled_with.clear()

    def cpp_error(gm, example_inputs, patches, our_pass, records_key):
        compiled_with.append(our_pass.graph_launches)
        our_pass.launched_in_graph = 1
        raise RuntimeError("CppCompileError: C++ compile error")

    monkeypatch.setattr(GlaBackend, "_compile", staticmethod(cpp_error))
    with pytest.raises(RuntimeError, match="CppCompileError"):
        backend._compile_with_pass(None, [], {"cpp_wrapper": True}, "graph 0")
    assert compiled_with == [True]
    # Nor an error raised in Inductor's combo-kernel code where combo kernels are the backend's default: __call__
    # compiles the graph again without them (our launches kept). Where the user chose them, the op calls are tried.
    combo_code = {}
    exec(compile("def codegen_combo():\n    raise RuntimeError('combo kernel codegen failed')\n",
                 "/site-packages/torch/_inductor/codegen/triton_combo_kernel.py", "exec"), combo_code)

    def combo_error(gm, example_inputs, patches, our_pass, records_key):
        compiled_with.append(our_pass.graph_launches)
        our_pass.launched_in_graph = int(our_pass.graph_launches)
        try:
            combo_code["codegen_combo"]()
        except RuntimeError as error:
            raise RuntimeError("InductorError: RuntimeError: combo kernel codegen failed") from error
        return "compiled"

    monkeypatch.setattr(GlaBackend, "_compile", staticmethod(combo_error))
    compiled_with.clear()
    with pytest.raises(RuntimeError, match="combo kernel codegen failed"):
        backend._compile_with_pass(None, [], {"combo_kernels": True}, "graph 0")
    assert compiled_with == [True]
    compiled_with.clear()
    users = glacompiler.backend(inductor_config={"combo_kernels": True})
    with pytest.warns(RuntimeWarning, match="compiling it again with op calls"), \
            pytest.raises(RuntimeError, match="combo kernel codegen failed"):
        users._compile_with_pass(None, [], {"combo_kernels": True}, "graph 0")
    assert compiled_with == [True, False]


def test_a_mask_without_its_shared_range_traces_the_reduction_first(gpu_stand_ins):
    graph = decode_graph(shared_range=False)
    assert replace_op_calls_with_launches(graph) == 1
    names = [kernel_name(launch) for launch in launches(graph)]
    assert names == ["mask_key_range_kernel", "decode_attention_split_kernel", "decode_attention_split_kernel"]
    range_launch, dense_pass, _ = launches(graph)
    # The attention reads the range the reduction wrote (rows of its result), not an uninitialised buffer.
    begin = dense_pass.kwargs["kwargs"]["KV_BEGIN"]
    assert begin.target is operator.getitem and begin.args[0].args[0].args == (range_launch, "RANGE")


def test_an_empty_batch_keeps_the_op(gpu_stand_ins):
    graph = decode_graph(batch=0)
    assert replace_op_calls_with_launches(graph) == 0


def test_traced_arguments_follow_the_prepared_run():
    """The launches take the op's tensor arguments in PreparedCall.run's order (a new schema tensor must reach it)."""
    import inspect

    parameters = [name for name, parameter in inspect.signature(PreparedCall.run).parameters.items()
                  if parameter.kind is parameter.POSITIONAL_OR_KEYWORD][1:]  # (not hold_workspace, keyword-only)
    assert list(ATTENTION_TENSORS) == parameters


def test_the_guard_refuses_what_a_plan_does_not_make():
    """A constant (get_attr), a mutation, or a launch writing an input: the op stays."""
    for make in (lambda g, x: g.get_attr("constant"),
                 lambda g, x: g.call_function(torch.ops.aten.add_.Tensor, (x, x))):
        graph = fx.Graph()
        x = graph.placeholder("x")
        graph.output(make(graph, x))
        root = torch.nn.Module()
        root.register_buffer("constant", torch.zeros(4))
        assert not writes_only_own_buffers(fx.GraphModule(root, graph))
    graph = fx.Graph()
    x = graph.placeholder("x")
    graph.output(graph.call_function(torch.ops.aten.view.default, (x, [4])))
    assert writes_only_own_buffers(fx.GraphModule(torch.nn.Module(), graph))


def test_the_cache_key_follows_the_tables(monkeypatch):
    """With launches in the graph its configs are part of it: the key holds what the lookups answer from."""
    from glacompiler.tables import lookup

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(lookup, "device_name", lambda index: "NVIDIA H200")
    keys = []
    for tables in ("1", "0"):
        monkeypatch.setenv("GLACOMPILER_TUNED_CONFIGS", tables)
        lookup.index_for_gpu.cache_clear()
        keys.append(AttentionRewritePass(graph_launches=True).uuid())
    lookup.index_for_gpu.cache_clear()
    assert keys[0] != keys[1]
    assert len(lookup.ConfigIndex([]).digest) == 16


def test_debug_value_checks_keep_op_calls():
    previous = glacompiler.set_debug_checks(True)  # (no conftest here: its fixture is not at hand)
    try:
        assert not AttentionRewritePass(graph_launches=True).graph_launches
    finally:
        glacompiler.set_debug_checks(previous)


class Sm90Driver:
    """Triton's active driver as an H200's would answer torch's analysis: its target."""

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", 90, 32)


@triton.jit
def other_package_kernel(X):  # (this test module's, not glacompiler's)
    pass


@pytest.fixture
def analysed_on_sm90(monkeypatch):
    """The GPU's queries stood in as above, but torch's own analysis of the kernels (it generates their TTIR, here
    for an H200's target), through the memo of kernel_analysis_memo.py; yields the count of TTIR generations."""
    from glacompiler.compiler import kernel_analysis_memo

    monkeypatch.setattr(dispatch, "device_multiprocessors", lambda device: 132)
    monkeypatch.setattr(dispatch, "device_card", lambda device: "NVIDIA H200")
    monkeypatch.setattr(dispatch, "tuned_config", lambda *args: None)
    generated = []
    original = triton_kernel_wrap.generate_ttir
    while getattr(original, "__wrapped__", None) is not None:  # (a memo installed earlier in this process)
        original = original.__wrapped__

    def counted(kernel, kwargs, tma_descriptor_metadata):
        generated.append(kernel)
        return original(kernel, kwargs, tma_descriptor_metadata)

    monkeypatch.setattr(triton_kernel_wrap, "generate_ttir", kernel_analysis_memo._memoised(counted))
    kernel_analysis_memo.forget_all()
    monkeypatch.setattr(triton.runtime.driver, "_active", Sm90Driver())
    yield generated
    kernel_analysis_memo.forget_all()


def test_kernel_analysis_is_generated_once_per_specialisation(analysed_on_sm90):
    """torch's analysis of the real kernels finds what the stand-in above assumes (each kernel writes its outputs
    only), and a second site of the same shapes reuses every TTIR the first one generated."""
    first = decode_graph()
    assert replace_op_calls_with_launches(first) == 2
    # The range kernel and the attention kernel's two passes (DENSE_PASS is a constexpr: two specialisations).
    assert len(analysed_on_sm90) == 3
    writes = [sorted(launch.kwargs["tensors_to_clone"]) for launch in launches(first)]
    assert writes == [["RANGE"], ["LSE", "OUT"], ["LSE", "OUT"]]
    import gc

    gc.collect()  # (a reused module owns its MLIR context: nothing of it may be collected)
    second = decode_graph()
    assert replace_op_calls_with_launches(second) == 2
    assert len(analysed_on_sm90) == 3
    assert [sorted(launch.kwargs["tensors_to_clone"]) for launch in launches(second)] == writes
    # Other strides are other specialisations.
    assert replace_op_calls_with_launches(decode_graph(batch=3, capacity=256)) == 2
    assert len(analysed_on_sm90) == 6


def test_kernel_analysis_memo_keys(analysed_on_sm90):
    from glacompiler.compiler.kernel_analysis_memo import analysis_key
    from glacompiler.kernels.common.mask_range_kernel import mask_key_range_kernel

    with FakeTensorMode():
        fake = torch.empty(4, device="cuda", dtype=torch.float16)
    real = torch.empty(4, dtype=torch.float16)
    assert analysis_key(other_package_kernel, {"X": fake}, {}) is None  # another package's kernel: torch as before
    key = analysis_key(mask_key_range_kernel, {"MASK": fake, "n": 64}, {})
    assert key is not None
    assert analysis_key(mask_key_range_kernel, {"MASK": real, "n": 64}, {}) is None  # (Triton reads its address)
    assert analysis_key(mask_key_range_kernel, {"MASK": fake, "n": 64}, {}) == key
    assert analysis_key(mask_key_range_kernel, {"MASK": fake, "n": 65}, {}) != key
    assert analysis_key(mask_key_range_kernel, {"MASK": fake.float(), "n": 64}, {}) != key
    scalars = (1, True, 1.0, None, 0.0, -0.0)
    assert len({analysis_key(mask_key_range_kernel, {"MASK": fake, "n": n}, {}) for n in scalars}) == len(scalars)
    # Plans wrap the kernel in an autotuner of their own warps and stages, which the TTIR does not depend on.
    wrapped = [triton.autotune(configs=[triton.Config({}, num_warps=warps, num_stages=stages)], key=[])(
        mask_key_range_kernel) for warps, stages in ((4, 2), (8, 3))]
    arguments = {"MASK": fake, "n": 64}
    assert analysis_key(wrapped[0], arguments, {}) == analysis_key(wrapped[1], arguments, {})


def test_kernel_analysis_memo_keys_what_torchs_own_fake_test_calls_fake(analysed_on_sm90, monkeypatch):
    """torch 2.14 on tells fakes apart with is_fake_tensor (C++ fakes too, which generate_ttir replaces alike): where
    torch has it, the memo keys what it calls fake by dtype and leaves anything else to torch."""
    from torch._subclasses import fake_tensor

    from glacompiler.compiler.kernel_analysis_memo import analysis_key
    from glacompiler.kernels.common.mask_range_kernel import mask_key_range_kernel

    marked = torch.empty(4, dtype=torch.float16)  # stands for a C++ fake: not a Python FakeTensor
    monkeypatch.setattr(fake_tensor, "is_fake_tensor", lambda value: value is marked, raising=False)
    assert analysis_key(mask_key_range_kernel, {"MASK": marked, "n": 64}, {}) is not None
    assert analysis_key(mask_key_range_kernel, {"MASK": marked.clone(), "n": 64}, {}) is None
    monkeypatch.delattr(fake_tensor, "is_fake_tensor")  # torch 2.13 and before: Python FakeTensors only
    assert analysis_key(mask_key_range_kernel, {"MASK": marked, "n": 64}, {}) is None


def range_kernel_arguments(**options):
    with FakeTensorMode():
        mask = torch.empty(2, 1, 1, 64, device="cuda", dtype=torch.uint8)
        key_range = torch.empty(2, 2, device="cuda", dtype=torch.int32)
    return dict(MASK=mask, RANGE=key_range, mask_heads=1, mask_tokens=1, capacity=64, batch=2, stride_mb=64,
                stride_mh=64, stride_mt=64, stride_mn=1, MASK_IS_BOOL=True, MASKED_BIAS=-65504.0, BLOCK_N=64, **options)


def test_kernel_analysis_memo_drops_launch_options_as_torch_does(analysed_on_sm90):
    """generate_ttir drops launch options from the caller's dict (a bare kernel's) or from its own copy (an
    autotuner's with a config): a memo hit does the same."""
    from glacompiler.kernels.common.mask_range_kernel import mask_key_range_kernel

    tuned = triton.autotune(configs=[triton.Config({}, num_warps=4)], key=[])(mask_key_range_kernel)
    answers = []
    for kernel, dropped in ((mask_key_range_kernel, True), (tuned, False), (mask_key_range_kernel, True)):
        arguments = range_kernel_arguments(num_warps=4)
        answers.append(triton_kernel_wrap.generate_ttir(kernel, arguments, {}))
        assert ("num_warps" not in arguments) == dropped
    # (torch 2.11 names the TTIR's tensor parameters only, later versions its scalars too)
    assert answers[0][1][:2] == ["MASK", "RANGE"] and "num_warps" not in answers[0][1]
    assert all(answer == answers[0] for answer in answers)
    assert answers[1][1] is not answers[0][1]  # (a copy each time: a caller may change its list)
    assert len(analysed_on_sm90) == 1


def test_kernel_analysis_memo_passes_other_kernels_and_errors_through(monkeypatch):
    from glacompiler.compiler import kernel_analysis_memo
    from glacompiler.kernels.common.mask_range_kernel import mask_key_range_kernel

    calls = []

    def generate_ttir(kernel, kwargs, tma_descriptor_metadata):
        calls.append(kernel)
        if kernel is mask_key_range_kernel:
            raise RuntimeError("no TTIR")
        return "module", ["X"]

    monkeypatch.setattr(triton.runtime.driver, "_active", Sm90Driver())
    memoised = kernel_analysis_memo._memoised(generate_ttir)
    kernel_analysis_memo.forget_all()
    with FakeTensorMode():
        fake = torch.empty(4, device="cuda", dtype=torch.float16)
    for _ in range(2):
        assert memoised(other_package_kernel, {"X": fake}, {}) == ("module", ["X"])
        with pytest.raises(RuntimeError, match="no TTIR"):
            memoised(mask_key_range_kernel, range_kernel_arguments(), {})
    assert calls == [other_package_kernel, mask_key_range_kernel] * 2  # nothing remembered of either


def test_the_backend_installs_the_kernel_analysis_memo_once(monkeypatch):
    from glacompiler.compiler import kernel_analysis_memo
    from glacompiler.compiler.torch_compile_backend import GlaBackend

    def generate_ttir(kernel, kwargs, tma_descriptor_metadata):
        raise AssertionError("not called here")

    monkeypatch.setattr(triton_kernel_wrap, "generate_ttir", generate_ttir)
    monkeypatch.setattr(kernel_analysis_memo.PATCH, "tried", False)
    monkeypatch.setattr(GlaBackend, "_compile_with_pass", lambda self, gm, inputs, patches, name: "compiled")
    monkeypatch.setenv("GLACOMPILER_KERNEL_ANALYSIS_MEMO", "0")
    assert glacompiler.backend()(None, []) == "compiled"
    assert triton_kernel_wrap.generate_ttir is generate_ttir
    monkeypatch.setenv("GLACOMPILER_KERNEL_ANALYSIS_MEMO", "1")
    for _ in range(2):
        assert glacompiler.backend()(None, []) == "compiled"
    assert triton_kernel_wrap.generate_ttir.__wrapped__ is generate_ttir  # (wrapped once)


@pytest.fixture
def hopper_stand_ins(monkeypatch):
    """The Hopper latent family taking CPU calls (as on an sm_90 device), 132 multiprocessors, no tuned table, and
    every prepared launch recorded instead of run: [(launch, args)]."""
    monkeypatch.setattr("glacompiler.kernels.latent_hopper.device_problem", lambda device: None)
    monkeypatch.setattr(dispatch, "device_multiprocessors", lambda device: 132)
    monkeypatch.setattr(dispatch, "device_card", lambda device: "NVIDIA H200")
    monkeypatch.setattr(dispatch, "tuned_config", lambda *args: None)
    launched = []
    monkeypatch.setattr(PreparedLaunch, "__call__", lambda launch, args: launched.append((launch, args)))
    clear_prepared_calls()
    yield launched
    clear_prepared_calls()


@pytest.mark.parametrize("splits", [1, 3])
def test_a_repeat_launches_the_first_calls_plan_into_the_buffers(hopper_stand_ins, monkeypatch, splits):
    """The first call prepares (validated) with the buffers' split count; a repeat of its key prepares nothing and
    launches the Hopper kernel with the arguments the op's own call passes, but the buffers."""
    launched = hopper_stand_ins
    problem = hopper_problem()
    arguments = into_arguments(problem)
    values = list(arguments.values())
    run_prepared(*values[:10], splits, *values[10:])  # the op's own call
    [(op_launch, op_args)] = [(launch, args) for launch, args in launched if "latent" in launch.kernel.__name__]
    assert op_launch.grid[2] == splits
    prepares = []
    real_prepare = into_buffers.prepare_call
    monkeypatch.setattr(into_buffers, "prepare_call", lambda *a, **k: prepares.append(a) or real_prepare(*a, **k))
    out, lse = split_buffers(problem.kwargs["q"], 256, splits)
    for call in range(2):
        launched.clear()
        run_into(*values, 12345, out, lse)
        [(launch, args)] = launched  # the kernel alone: the graph launches the combine
        assert launch.grid == op_launch.grid and launch.constexprs == op_launch.constexprs
        assert args[9] is out and args[10] is lse
        assert all(a is b if isinstance(a, torch.Tensor) else a == b
                   for i, (a, b) in enumerate(zip(args, op_args)) if i not in (9, 10))
        assert len(prepares) == 1 and prepares[0][10] == splits  # its split count is the buffers'
    assert prepared.calls_into_buffers[12345].into_buffers
    clear_prepared_calls()
    assert not prepared.calls_into_buffers


def hopper_problem(batch=2):
    """A GLA-2-shaped call (16 heads over 2 latents of 256, rope 64) in pages of 64, fp16, on the CPU."""
    spec = AttentionSpec.latent(16, 2, 256, 64).with_storage(paged=True)
    return make_decode_problem(spec, batch=batch, query_len=1, capacity=256, page_size=64, dtype=torch.float16,
                               generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("buffers", ["split count", "dtype", "strided", "strided lengths"])
def test_buffers_the_plan_cannot_write_take_the_ops_own_call(hopper_stand_ins, caplog, buffers):
    """Buffers whose split counts disagree, or whose dtype or strides are not the plan's (or lengths the kernel would
    need copied) take the op's own call and a copy, with a warning: never a launch into them."""
    launched = hopper_stand_ins
    problem = hopper_problem()
    values = list(into_arguments(problem).values())
    out, lse = split_buffers(problem.kwargs["q"], 256, 3)
    if buffers == "split count":  # (the split count is out's: lse of another)
        lse = lse[:, :, :, :2].contiguous()
    elif buffers == "dtype":
        out = out.half()
    elif buffers == "strided":
        out = out.transpose(2, 3).contiguous().transpose(2, 3)
    else:
        values[5] = torch.stack([values[5], values[5]], dim=1)[:, 0]  # cache_seqlens
    with caplog.at_level("WARNING", logger="glacompiler"):
        run_into(*values, 777, out, lse)
    assert not prepared.calls_into_buffers[777].into_buffers
    assert "cannot write its graph's buffers" in caplog.text
    # Never a launch into them, the combine's included (the op's own call here takes the heuristic's splits).
    assert any("combine" in launch.kernel.__name__ for launch, _ in launched)
    assert not any(arg is out or arg is lse for _, args in launched for arg in args)


def test_debug_value_checks_run_on_repeats(hopper_stand_ins):
    """With GLACOMPILER_DEBUG=1 a repeat checks the values, as the op's repeats do."""
    problem = hopper_problem()
    values = list(into_arguments(problem).values())
    out, lse = split_buffers(problem.kwargs["q"], 256, 1)
    run_into(*values, 99, out, lse)
    values[5] = torch.full_like(values[5], 10 ** 6)  # lengths past the cache
    run_into(*values, 99, out, lse)  # (checks off: a repeat reads no value)
    previous = set_debug_checks(True)
    try:
        with pytest.raises(ValueError, match="cache_seqlens"):
            run_into(*values, 99, out, lse)
    finally:
        set_debug_checks(previous)

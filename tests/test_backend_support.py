"""Helpers for the backend tests (no tests here).

run_pass(): traces a function the way Inductor does (dynamo, AOT with Inductor's decompositions, inference
graph), runs our pass on the ATen graph, counts ops before and after, and executes the rewritten graph
eagerly: the pass's whole effect, without paying for Inductor's C++ compile in every test.
compile_and_count(): the full backend, with the graph after our pass observed through a chained
joint_custom_pre_pass (the backend runs a user's pass after its own).
RecordingPass: a torch.compile backend of our pass alone (AOT, the pass, the graph run eagerly), for whole models
without Inductor's compile."""
from __future__ import annotations

import collections
import dataclasses
import re

import torch
import torch._dynamo
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch._inductor.decomposition import select_decomp_table

import glacompiler
from glacompiler.compiler.rewrite.graph_launches import LAUNCHED_CALL
from glacompiler.compiler.graph_pass import AttentionRewritePass

GLA_OP = torch.ops.glacompiler.attention_with_kvcache.default
aten = torch.ops.aten
SDPA_OPS = [
    getattr(aten, name).default
    for name in (
        "scaled_dot_product_attention",
        "_scaled_dot_product_flash_attention_for_cpu",
        "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention",
        "_scaled_dot_product_cudnn_attention",
    )
    if hasattr(aten, name)
]


def count_ops(graph: torch.fx.Graph) -> collections.Counter:
    """Op counts of a graph; an op call replaced by the launches of its kernels (rewrite/graph_launches.py) counts
    as the op (and as a "launched_in_graph" too; one whose kernels write the graph's buffers through attention_into
    as a "gla_into_buffers" as well)."""
    counts = collections.Counter()
    launched = {node.meta[LAUNCHED_CALL] for node in graph.nodes if LAUNCHED_CALL in node.meta}
    for op_name, _ in launched:
        kind = "gla" if op_name.startswith("attention_with_kvcache") else "mask_range"
        counts[kind] += 1
        counts[f"{kind}_launched_in_graph"] += 1
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is GLA_OP:
            counts["gla"] += 1
        elif node.args[:1] == (torch.ops.glacompiler.attention_into.default,):  # (as auto_functionalized)
            counts["gla_into_buffers"] += 1
        elif node.target is torch.ops.glacompiler.mask_key_range.default:
            counts["mask_range"] += 1
        elif node.target in SDPA_OPS:
            counts["sdpa"] += 1
        elif node.target in (aten.bmm.default, aten.mm.default):
            counts["bmm"] += 1
        elif node.target in (aten.amax.default, aten._softmax.default, aten._safe_softmax.default):
            counts["softmax"] += 1
    return counts


@dataclasses.dataclass
class PassResult:
    before: collections.Counter
    after: collections.Counter
    output: object
    records: list
    graph: torch.fx.Graph  # after the pass

    def op_calls(self) -> list:
        return [node for node in self.graph.nodes if node.op == "call_function" and node.target is GLA_OP]

    @property
    def statuses(self) -> list:
        return [record.status for record in self.records]

    @property
    def reasons(self) -> str:
        return " | ".join(record.reason for record in self.records)


class PassHarness:
    """fn compiled once into an ATen inference graph rewritten by our pass and run eagerly; call it like fn.
    `result()` describes the last graph compiled."""

    def __init__(self, fn):
        self.state = {}
        backend = aot_autograd(fw_compiler=self._compile, decompositions=select_decomp_table(),
                               keep_inference_input_mutations=True)
        torch._dynamo.reset()
        self.compiled = torch.compile(fn, backend=backend, fullgraph=True)

    def _compile(self, gm, example_inputs):
        self.state["before"] = count_ops(gm.graph)
        rewrite = AttentionRewritePass(graph_name="test")
        rewrite(gm.graph)
        gm.recompile()
        self.state["after"] = count_ops(gm.graph)
        self.state["records"] = rewrite.records
        self.state["graph"] = gm.graph
        return make_boxed_func(gm.forward)

    def __call__(self, *args):
        with torch.no_grad():
            return self.compiled(*args)

    def result(self, output=None) -> PassResult:
        return PassResult(self.state["before"], self.state["after"], output, self.state["records"],
                          self.state["graph"])


class RecordingPass:
    """A torch.compile backend: AOT to the ATen inference graph, our pass, then the graph run eagerly."""

    def __init__(self):
        self.records = []
        self.graphs = 0

    def _compile(self, gm, example_inputs):
        rewrite = AttentionRewritePass(graph_name=f"graph {self.graphs}")
        self.graphs += 1
        rewrite(gm.graph)
        gm.recompile()
        self.records.extend(rewrite.records)
        return make_boxed_func(gm.forward)

    def backend(self):
        return aot_autograd(fw_compiler=self._compile, decompositions=select_decomp_table(),
                            keep_inference_input_mutations=True)


def repeat_kv(x, groups):
    """Hugging Face's repeat_kv: [B, Hkv, S, D] -> [B, Hkv * groups, S, D] by expand + reshape."""
    batch, heads, length, dim = x.shape
    return x[:, :, None, :, :].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


def run_pass(fn, *args) -> PassResult:
    """fn(*args) traced to an ATen inference graph, rewritten by our pass, run eagerly."""
    harness = PassHarness(fn)
    return harness.result(harness(*args))


def check_rewritten(fn, *args) -> PassResult:
    """run_pass of a function with one attention site: rewritten into one op call, no softmax left, and the same
    output as eager (fp32)."""
    result = run_pass(fn, *args)
    assert result.after["gla"] == 1 and result.after["softmax"] == 0, result.reasons
    assert result.statuses == ["rewritten"]
    with torch.no_grad():
        assert_close(result.output, fn(*args), tol=1e-4)
    return result


class GraphObserver(CustomGraphPass):
    """A user joint_custom_pre_pass: the gla backend runs it after its own pass, on the rewritten graph."""

    def __init__(self):
        self.counts = []

    def __call__(self, graph):
        self.counts.append(count_ops(graph))

    def uuid(self):
        return None


def compile_and_count(fn, *args, backend="gla"):
    """(output, per-graph op counts after our pass, report records) of the full backend."""
    observer = GraphObserver()
    torch._dynamo.reset()
    glacompiler.reset_report()
    with torch.no_grad(), torch._inductor.config.patch(joint_custom_pre_pass=observer):
        output = torch.compile(fn, backend=backend)(*args)
    return output, observer.counts, glacompiler.compile_report()


def assert_close(actual, expected, tol=1e-5):
    """fp32: the op's CPU path accumulates in fp32 like eager, so only summation order differs."""
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * max(1.0, expected.abs().max().item()))


def fake_cuda_inputs() -> list:
    """Example inputs on CUDA for config_patches, made without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        return [torch.empty(2, device="cuda")]


def assert_cuda_default(setting: str, without_graphs: bool) -> None:
    """The backend turns the Inductor setting on for CUDA under CUDA graphs (and without them where
    `without_graphs`); inductor_config chooses over it, and on CPU it is left alone."""
    cuda_inputs = fake_cuda_inputs()
    assert glacompiler.backend(cudagraphs=True).config_patches(cuda_inputs)[setting] is True
    assert glacompiler.backend().config_patches(cuda_inputs).get(setting) is (True if without_graphs else None)
    assert setting not in glacompiler.backend(cudagraphs=True).config_patches([torch.empty(2)])
    assert setting not in glacompiler.backend().config_patches([torch.empty(2)])
    for cudagraphs in (True, False):
        declined = glacompiler.backend(cudagraphs=cudagraphs, inductor_config={setting: False})
        assert declined.config_patches(cuda_inputs)[setting] is False


def triton_kernel_bodies(code: str) -> dict:
    """{name: body from its def on} of Inductor's own Triton kernels in its generated (Python wrapper) code:
    triton_ and three letters of the kind (poi, red, per, spl, unk; combo kernels take a sub-kernel's), templates
    (tem, never dependents) and the user-defined ones, ours among them, left out."""
    sources = re.findall(r"(triton_(?!tem_)[a-z]{3}_\w+) = async_compile\.triton\('\w+', '''(.*?)'''", code, re.S)
    return {name: source[source.index(f"def {name}("):] for name, source in sources}


def assert_waits_first(name: str, body: str) -> None:
    """A kernel (its body from its def on) that waits on the kernel ahead (gdc_wait) before its first load, store
    or atomic. (A combo kernel waits again in each sub-kernel's branch.)"""
    wait = body.find("gdc_wait()")
    accesses = [match.start() for match in re.finditer(r"tl\.(load|store|atomic_\w+)\(", body)]
    assert 0 <= wait < min(accesses, default=len(body)), (name, body)

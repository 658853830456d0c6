"""GEMMs over frozen weights padded to aligned widths (compiler/align_projections.py): the padded weights, the
compiled graph's GEMM shapes, and outputs against eager (on CPU with CPU GEMMs let in; in bf16 on the GPU)."""
import pytest
import torch
import torch._inductor.config as inductor_config
from torch._dynamo.utils import counters
from torch._inductor.custom_graph_pass import CustomGraphPass

import glacompiler
from glacompiler.compiler import align_projections
from glacompiler.compiler.align_projections import aligned_width, padded_weight
from frozen_model_cases import FROZEN, STEP, tiny_model  # (beside it)

ODD_MLP = 91  # the tiny GTA-4 model's MLP width in the model tests: gate + up concatenated are 182 wide
GEMMS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)


class GemmShapes(CustomGraphPass):
    """[input shape, weight shape] of each GEMM Inductor compiles, and the padded constants its graphs hold, seen
    after every post-grad pass."""

    def __init__(self):
        self.shapes, self.padded_constants, self.input_pads = [], [], []

    def __call__(self, graph):
        self.shapes += [(tuple(node.args[-2].meta["val"].shape), tuple(node.args[-1].meta["val"].shape))
                        for node in graph.nodes if node.target in GEMMS]
        self.padded_constants += [node.target for node in graph.nodes
                                  if node.op == "get_attr" and node.target.startswith("_gla_aligned")]
        self.input_pads += [node for node in graph.nodes if node.target is torch.ops.aten.constant_pad_nd.default]

    def uuid(self):
        return None


def compile_frozen(fn, inputs: tuple, settings: dict = FROZEN, seen: GemmShapes = None) -> tuple:
    """(outputs, GEMM shapes, GEMMs the pass padded) of `fn` compiled under the backend with `settings`."""
    torch._dynamo.reset()
    seen = seen or GemmShapes()
    before = counters["glacompiler"]["projections_aligned"]
    with torch.no_grad(), inductor_config.patch({**settings, "post_grad_custom_post_pass": seen}):
        outputs = torch.compile(fn, backend=glacompiler.backend())(*inputs)
    return outputs, seen.shapes, counters["glacompiler"]["projections_aligned"] - before


def assert_as_eager(outputs, expected, tolerance=1e-5):
    """Values and strides (a padded product sliced back must come out as the GEMM's did)."""
    for output, reference in zip(outputs, expected):
        torch.testing.assert_close(output, reference, rtol=tolerance, atol=tolerance)
        assert output.stride() == reference.stride(), (output.stride(), reference.stride())


class OddMLP(torch.nn.Module):
    """A SwiGLU of an odd width (30: gate and up by 30 columns, down by 30 rows) and a head of odd width with a bias,
    whose product is a graph output and is flattened by a view (which needs it contiguous)."""

    def __init__(self):
        super().__init__()
        self.gate, self.up = torch.nn.Linear(32, 30, bias=False), torch.nn.Linear(32, 30, bias=False)
        self.down = torch.nn.Linear(30, 32, bias=False)
        self.head = torch.nn.Linear(32, 37)

    def forward(self, x):
        logits = self.head(self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x)))
        return logits, logits.view(-1) * 2.0


@pytest.fixture
def cpu_gemms_padded(monkeypatch):
    """The pass pads CUDA GEMMs only; on CPU the tests let CPU ones in, to check the rewrite through Inductor."""
    monkeypatch.setattr(align_projections, "PADDED_DEVICE_TYPES", ("cuda", "cpu"))


def test_aligned_widths_are_multiples_of_16_bytes():
    assert [aligned_width(w, torch.bfloat16) for w in (6638, 6640, 1, 8)] == [6640, 6640, 8, 8]
    assert [aligned_width(w, torch.float32) for w in (30, 37, 32)] == [32, 40, 32]


def test_a_padded_weight_keeps_its_layout_and_values_and_adds_zeros():
    linear = torch.randn(30, 37).t()  # nn.Linear's [N, K] seen as [K, N]
    padded = padded_weight(linear, 40, 32)
    assert padded.shape == (40, 32) and padded.t().is_contiguous()
    assert torch.equal(padded[:37, :30], linear) and not padded[37:].any() and not padded[:, 30:].any()
    row_major = torch.randn(37, 30)
    padded = padded_weight(row_major, 40, 32)
    assert padded.is_contiguous() and torch.equal(padded[:37, :30], row_major)
    assert not padded[37:].any() and not padded[:, 30:].any()


def test_odd_widths_are_padded_and_the_outputs_stay_exact(cpu_gemms_padded):
    torch.manual_seed(0)
    model, x = OddMLP().eval(), torch.randn(5, 32)
    outputs, shapes, padded = compile_frozen(model, (x,))
    assert padded == 2  # down (input width 30) and head (output width 37); gate + up, concatenated, are 60 wide
    assert shapes and all(dim % 4 == 0 for _, weight in shapes for dim in weight), shapes  # 16 bytes of fp32
    with torch.no_grad():
        assert_as_eager(outputs, model(x))


def test_a_batch_of_more_rows_than_the_widths_is_left_alone(cpu_gemms_padded):
    """At 64 rows the copies a pad may add would move more than the widths-30-and-37 weights: no padding."""
    model, x = OddMLP().eval(), torch.randn(64, 32)
    outputs, shapes, padded = compile_frozen(model, (x,))
    assert padded == 0 and (32, 37) in [weight for _, weight in shapes]
    with torch.no_grad():
        assert_as_eager(outputs, model(x))


class SharedWeight(torch.nn.Module):
    """One Linear of odd widths applied to two inputs (two GEMMs over one frozen weight) and a second one applied to
    the first input (two GEMMs padding one input)."""

    def __init__(self):
        super().__init__()
        self.shared, self.other = torch.nn.Linear(30, 37), torch.nn.Linear(30, 8, bias=False)

    def forward(self, x, y):
        return self.shared(x), self.shared(y * 2.0), self.other(x)


def test_a_weight_or_input_several_gemms_share_is_padded_once(cpu_gemms_padded):
    torch.manual_seed(0)
    model, inputs = SharedWeight().eval(), (torch.randn(5, 30), torch.randn(5, 30))
    seen = GemmShapes()
    outputs, shapes, padded = compile_frozen(model, inputs, seen=seen)
    assert padded == 3 and all(inp[1] == 32 for inp, _ in shapes), shapes
    assert len(set(seen.padded_constants)) == 3, seen.padded_constants  # shared's weight and bias, other's weight
    assert len(seen.input_pads) == 2, seen.input_pads  # x (for shared and other) and y * 2
    with torch.no_grad():
        assert_as_eager(outputs, model(*inputs))


def test_a_dynamic_batch_is_padded_by_its_hint_and_stays_exact(cpu_gemms_padded):
    model, x = OddMLP().eval(), torch.randn(5, 32)
    torch._dynamo.mark_dynamic(x, 0)
    outputs, shapes, padded = compile_frozen(model, (x,))
    assert padded == 2 and all(isinstance(inp[0], torch.SymInt) for inp, _ in shapes), shapes
    with torch.no_grad():
        assert_as_eager(outputs, model(x))


def test_a_gemm_the_pass_cannot_pad_is_left_alone_with_a_warning(cpu_gemms_padded, monkeypatch, caplog):
    def broken(*args):
        raise RuntimeError("cannot pad")

    monkeypatch.setattr(align_projections, "padded_weight", broken)
    monkeypatch.delenv("GLACOMPILER_STRICT", raising=False)
    model, x = OddMLP().eval(), torch.randn(5, 32)
    with caplog.at_level("WARNING", logger="glacompiler"):
        outputs, shapes, padded = compile_frozen(model, (x,))
    assert padded == 0 and "left unpadded" in caplog.text and (32, 37) in [weight for _, weight in shapes]
    with torch.no_grad():
        assert_as_eager(outputs, model(x))


def test_nothing_is_padded_on_cpu_or_without_freezing(cpu_gemms_padded, monkeypatch):
    model, x = OddMLP().eval(), torch.randn(5, 32)
    _, shapes, padded = compile_frozen(model, (x,), {"cpp.weight_prepack": False})
    assert padded == 0 and (5, 30) in [inp for inp, _ in shapes]  # the weights are graph inputs: left alone
    monkeypatch.setattr(align_projections, "PADDED_DEVICE_TYPES", ("cuda",))
    _, shapes, padded = compile_frozen(model, (x,))
    assert padded == 0 and (5, 30) in [inp for inp, _ in shapes]


def test_a_model_with_an_odd_mlp_width_decodes_as_eager(cpu_gemms_padded):
    logits, shapes, padded = compile_frozen(tiny_model("gta-4", ffn_dim=ODD_MLP).decode, STEP)
    assert padded == 2 * 2 + 1  # a layer's gate + up (concatenated: 182 wide) and down (91 rows); the head (257)
    assert all(dim % 4 == 0 for _, weight in shapes for dim in weight), shapes
    with torch.no_grad():
        expected = tiny_model("gta-4", ffn_dim=ODD_MLP).decode(*STEP)
    torch.testing.assert_close(logits, expected, rtol=2e-4, atol=2e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("shape_padding", [False, True])
def test_odd_widths_on_the_gpu_in_bf16(shape_padding):
    """The CUDA path: every GEMM of the frozen step 16-byte aligned, logits in bf16 against the fp32 eager step within
    2x the error of bf16 eager (FlashAttention's rule) plus one bf16 rounding step. With Inductor's pad_mm off, this
    pass pads all 5 odd GEMMs; with it on (as users get it) pad_mm, a joint-graph pass that runs first, pads those
    it times faster padded, so the count left to this pass depends on the machine (3 of 5 on one H200 lease, 5 on
    another; forced on CPU, pad_mm pads all 5 first)."""
    step = tuple(tensor.cuda() for tensor in STEP)
    with torch.no_grad():
        expected = tiny_model("gta-4", device="cuda", ffn_dim=ODD_MLP).decode(*step)
        eager = tiny_model("gta-4", device="cuda", dtype=torch.bfloat16, ffn_dim=ODD_MLP).decode(*step)
    eager_error = (eager.float() - expected).abs().max()
    model = tiny_model("gta-4", device="cuda", dtype=torch.bfloat16, ffn_dim=ODD_MLP)
    logits, shapes, padded = compile_frozen(model.decode, step, {"freezing": True, "shape_padding": shape_padding})
    if not shape_padding:
        assert padded == 2 * 2 + 1  # as on CPU: whoever concatenates gate and up, they are 182 wide
    assert shapes and all(dim % 8 == 0 for _, weight in shapes for dim in weight), shapes
    error = (logits.float() - expected).abs().max()
    assert error <= 2 * eager_error + expected.abs().max() * 2 ** -8, (error, eager_error)

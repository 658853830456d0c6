"""Projections of one input fused into one GEMM under freezing (compiler/concat_projections.py), on CPU: the GEMMs
in Inductor's code, the outputs against eager, and the pass's place in the backend's config."""
import pytest
import torch
import torch._functorch.config
import torch._inductor.config as inductor_config
from torch._dynamo.utils import counters
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch._inductor.fx_passes import pad_mm

import glacompiler
from glacompiler.compiler.concat_projections import _concatenated_weight
from glacompiler.compiler.frozen_projections import FrozenProjectionsPass, with_frozen_projection_passes
from glacompiler.models import TinyLM
from frozen_model_cases import FROZEN, STEP, tiny_model  # (beside it)

def compiled_step(model: TinyLM, settings: dict, step: tuple = STEP):
    """(logits, projections the pass removed) of a decode step compiled under the backend with `settings` in
    Inductor's config (freezing must be on when Dynamo traces: it keeps the parameters as attributes only then; in
    the backend's inductor_config it would come too late)."""
    torch._dynamo.reset()
    before = counters["glacompiler"]["projections_concatenated"]
    with torch.no_grad(), inductor_config.patch(settings):
        logits = torch.compile(model.decode, backend=glacompiler.backend())(*step)
    return logits, counters["glacompiler"]["projections_concatenated"] - before


def eager_step(variant: str, seed: int = 0):
    with torch.no_grad():  # (each model its own: a step writes its token into the cache)
        return tiny_model(variant, seed).decode(*STEP)


def compiled_module(model: torch.nn.Module, x: torch.Tensor, seen: CustomGraphPass = None) -> int:
    """Compiles `model` frozen under the backend (`seen` as Inductor's post-grad post-pass), checks its outputs on `x`
    against eager, and returns the projections the pass removed."""
    torch._dynamo.reset()
    before = counters["glacompiler"]["projections_concatenated"]
    with torch.no_grad(), inductor_config.patch({**FROZEN, "post_grad_custom_post_pass": seen}):
        outputs = torch.compile(model, backend=glacompiler.backend())(x)
        expected = model(x)
    for output, reference in zip(outputs, expected, strict=True):
        torch.testing.assert_close(output, reference, rtol=1e-5, atol=1e-5)
    return counters["glacompiler"]["projections_concatenated"] - before


# Projections of a layer's normed input: GQA's q, k and v; GTA's q, tied state and rope key; GLA's query down-
# projection, latent and rope key; and the MLP's gate and up, which freezing concatenates itself on CUDA but on CPU
# only with cpp.enable_concat_linear (off here).
@pytest.mark.parametrize("variant", ["gqa-4", "gta-4", "gla-2"])
def test_frozen_projections_of_one_input_take_one_gemm(variant):
    logits, removed = compiled_step(tiny_model(variant), FROZEN)
    assert removed == 2 * 3  # three GEMMs fewer a layer, two layers
    torch.testing.assert_close(logits, eager_step(variant), rtol=2e-4, atol=2e-4)


def describe_gemm(node) -> str:
    """'name(input, weight [K, N])': what a failed count names."""
    *_, inp, weight = node.args
    return f"{node.name}({inp.name}, {weight.name} {list(weight.meta['val'].shape)})"


class GemmCounter(CustomGraphPass):
    """The GEMMs (mm, addmm) of each graph Inductor compiles, after every post-grad pass: per graph, each one
    described (by `describe`, describe_gemm unless given)."""

    def __init__(self, describe=describe_gemm):
        self.per_graph, self.describe = [], describe

    def __call__(self, graph):
        self.per_graph.append([self.describe(node) for node in graph.nodes
                               if node.target in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)])

    def uuid(self):
        return None  # (never from the FX-graph cache: the count is made while compiling)


def step_gemms(model: TinyLM, step: tuple, settings: dict) -> tuple:
    """(logits, GEMMs of each graph compiled) of a decode step compiled under the backend with `settings` in
    Inductor's config."""
    counter = GemmCounter()
    logits, _ = compiled_step(model, {**settings, "post_grad_custom_post_pass": counter}, step)
    return logits, counter.per_graph


def gemms_folded(unfrozen: list, frozen: list) -> int:
    """GEMMs fewer with freezing; both compiles made the same graphs (a graph compiled again, as the backend does
    when a wrapper fails to build, would count twice)."""
    assert len(unfrozen) == len(frozen), (unfrozen, frozen)
    return sum(map(len, unfrozen)) - sum(map(len, frozen))


def test_freezing_takes_three_gemms_a_layer_off_the_compiled_step():
    """What the GPU test below counts, on CPU: a layer's projections of one input in one GEMM (the attention's
    three, and the MLP's gate and up), whoever concatenates them."""
    _, unfrozen = step_gemms(tiny_model("gqa-4"), STEP, {"cpp.weight_prepack": False})
    _, frozen = step_gemms(tiny_model("gqa-4"), STEP, FROZEN)
    assert gemms_folded(unfrozen, frozen) == 2 * 3, frozen


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["gqa-4", "gta-4", "gla-2"])
def test_frozen_projections_on_the_gpu_in_bf16(variant):
    """On CUDA, torch 2.11's freezing concatenates weights of one shape only (the MLP's gate and up) and the pass takes
    the attention's three projections; torch 2.13's freezing takes any of one input width itself. Either way a
    layer's projections of one input take one GEMM: three fewer a layer than unfrozen, whichever of them pad_mm pads
    (on the lent machines it timed every GEMM: see the CPU test above). Logits in bf16 against the fp32 eager step:
    at most 2x the error of bf16 eager (FlashAttention's rule) plus one bf16 rounding step."""
    step = tuple(tensor.cuda() for tensor in STEP)
    with torch.no_grad():
        expected = tiny_model(variant, device="cuda").decode(*step)
        eager = tiny_model(variant, device="cuda", dtype=torch.bfloat16).decode(*step)
        eager_error = (eager.float() - expected).abs().max()
    gemms = {}
    for freezing in (False, True):
        logits, gemms[freezing] = step_gemms(tiny_model(variant, device="cuda", dtype=torch.bfloat16), step,
                                             {"freezing": freezing})
        error = (logits.float() - expected).abs().max()
        assert error <= 2 * eager_error + expected.abs().max() * 2 ** -8, (freezing, error, eager_error)
    assert gemms_folded(gemms[False], gemms[True]) == 2 * 3, gemms[True]  # (the GEMMs left name a group unfused)


def test_a_second_model_of_the_same_shapes_gets_its_own_weights(tmp_path, monkeypatch):
    """With Inductor's FX-graph cache on, a model compiled after another of the same shapes but other weights: the
    fused weights are made at compile time, so its graph must not come from the first one's cache entry."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with inductor_config.patch(fx_graph_cache=True), torch._functorch.config.patch(enable_autograd_cache=True):
        for seed in (0, 1):
            logits, removed = compiled_step(tiny_model("gqa-4", seed), FROZEN)
            assert removed == 2 * 3
            torch.testing.assert_close(logits, eager_step("gqa-4", seed), rtol=2e-4, atol=2e-4)


class Biased(torch.nn.Module):
    """Projections with biases: three of one input (fused, biases concatenated) and one whose bias broadcasts."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(32, width) for width in (32, 8, 8))
        self.w = torch.nn.Parameter(torch.randn(8, 32))
        self.b = torch.nn.Parameter(torch.randn(1))  # addmm broadcasts a [1] bias: it cannot be concatenated

    def forward(self, x):
        h = x * 2.0
        return self.q(h), self.k(h) * self.v(h), torch.addmm(self.b, h, self.w.t())


def test_biases_are_concatenated_and_a_broadcast_bias_is_left_alone():
    torch.manual_seed(0)
    assert compiled_module(Biased().eval(), torch.randn(5, 32)) == 2  # q, k and v; the [1]-bias one alone


class RowPadded(torch.nn.Module):
    """q, k and v of one input, q's GEMM as Inductor's pad_mm leaves one (the input's 2 rows padded to 8, the product
    sliced back to 2), and three projections of that padded input whose slices keep other rows than the input's (rows
    1-2, row 0 alone, rows 0 and 2): they must stay out of the group."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = (torch.nn.Linear(32, width, bias=False) for width in (32, 8, 8))
        self.others = torch.nn.ModuleList(torch.nn.Linear(32, 8, bias=False) for _ in range(3))

    def forward(self, x):
        h = x * 2.0
        padded = torch.nn.functional.pad(h, (0, 0, 0, 6))
        q = torch.mm(padded, self.q.weight.t())[:2]
        shifted, first, strided = (torch.mm(padded, other.weight.t()) for other in self.others)
        return q, self.k(h) * self.v(h), shifted[1:3], first[:1], strided[0:4:2]


def input_maker_and_width(node) -> tuple:
    """(the target of the node that made the GEMM's input, its weight's width)."""
    return node.args[-2].target, node.args[-1].meta["val"].shape[1]


def test_a_projection_with_its_rows_padded_joins_the_group_of_its_input():
    """q, k and v in one GEMM over the input, 48 wide; the other rows' projections in one over the padded input."""
    torch.manual_seed(0)
    seen = GemmCounter(input_maker_and_width)
    compiled_module(RowPadded().eval(), torch.randn(2, 32), seen)
    (gemms,) = seen.per_graph
    assert sorted(gemms, key=str) == [(torch.ops.aten.constant_pad_nd.default, 3 * 8),
                                      (torch.ops.aten.mul.Tensor, 32 + 8 + 8)], gemms


class Chained(torch.nn.Module):
    """Two projections of x, then two of the first one's product itself: the second group's input is a GEMM the
    first fusion erases."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = (torch.nn.Linear(32, width, bias=False) for width in (32, 16, 8, 8))

    def forward(self, x):
        h = self.a(x)
        return self.b(x), self.c(h) * self.d(h)


def test_a_group_whose_input_an_earlier_fusion_replaced_reads_the_replacement():
    torch.manual_seed(0)
    assert compiled_module(Chained().eval(), torch.randn(2, 32)) == 2  # a with b, c with d


def test_a_projection_inductor_padded_alone_still_takes_the_groups_gemm(monkeypatch):
    """What the GPU test below met on the lent machines (torch 2.11): Inductor's pad_mm timed each 2-row GEMM and
    padded GLA's 64-wide query down-projection only, so it read a padded input and its group (with the latent and rope
    key) was one GEMM short. Here pad_mm is let onto CPU GEMMs and pads exactly those."""
    monkeypatch.setattr(pad_mm, "check_device", lambda mat1, mat2: True)  # (pad_mm pads CUDA GEMMs only)
    monkeypatch.setattr(pad_mm, "has_triton", lambda: True)
    monkeypatch.setattr(pad_mm, "should_pad", lambda match, mat1, mat2, op, input=None:
                        pad_mm.can_pad(mat1, mat2, op, input) and mat2.shape[1] == 64)
    logits, unfrozen = step_gemms(tiny_model("gla-2"), STEP, {"cpp.weight_prepack": False})
    assert sum("constant_pad_nd" in gemm for graph in unfrozen for gemm in graph) == 2  # one a layer: padded alone
    torch.testing.assert_close(logits, eager_step("gla-2"), rtol=2e-4, atol=2e-4)
    logits, frozen = step_gemms(tiny_model("gla-2"), STEP, FROZEN)
    assert gemms_folded(unfrozen, frozen) == 2 * 3, frozen
    torch.testing.assert_close(logits, eager_step("gla-2"), rtol=2e-4, atol=2e-4)


def test_concatenated_weight_keeps_the_linear_layout_where_every_weight_has_it():
    linear = [torch.randn(n, 16).t() for n in (16, 4, 4)]  # nn.Linear's [N, K] seen as [K, N]
    fused = _concatenated_weight(linear)
    assert fused.t().is_contiguous() and torch.equal(fused, torch.cat(linear, dim=1))
    mixed = [linear[0], torch.randn(16, 8)]  # one already [K, N] row-major (a concatenation freezing made)
    fused = _concatenated_weight(mixed)
    assert fused.is_contiguous() and torch.equal(fused, torch.cat(mixed, dim=1))


class Recorder(CustomGraphPass):
    def __init__(self, uuid=None):
        self.calls, self._uuid = 0, uuid

    def __call__(self, graph):
        self.calls += 1

    def uuid(self):
        return self._uuid


def test_the_pass_goes_in_only_where_the_graph_is_frozen_and_keeps_the_users_pass():
    assert with_frozen_projection_passes({"cpp_wrapper": True}) == {"cpp_wrapper": True}
    user = Recorder("mine")
    patches = with_frozen_projection_passes({"freezing": True, "post_grad_custom_pre_pass": user})
    installed = patches["post_grad_custom_pre_pass"]
    assert isinstance(installed, FrozenProjectionsPass) and installed.chained is user
    with inductor_config.patch(freezing=True):  # (the process's own setting counts too)
        assert isinstance(with_frozen_projection_passes({})["post_grad_custom_pre_pass"], FrozenProjectionsPass)
    assert installed.uuid() is None  # (the FX-graph cache bypassed: see the second-model test)
    installed(torch.fx.Graph(), is_inference=True)
    assert user.calls == 1  # the user's pass still runs, after ours


def test_freezing_only_in_the_backends_inductor_config_is_reported():
    """Dynamo keeps parameters as constants only where freezing is on while it traces: set in the backend's
    inductor_config it comes too late, and nothing is frozen (so nothing is concatenated)."""
    model = tiny_model("gqa-4")
    torch._dynamo.reset()
    before = counters["glacompiler"]["projections_concatenated"]
    with torch.no_grad(), inductor_config.patch({"cpp.weight_prepack": False}), \
            pytest.warns(RuntimeWarning, match="torch._inductor.config.freezing"):
        torch.compile(model.decode, backend=glacompiler.backend(inductor_config={"freezing": True}))(*STEP)
    assert counters["glacompiler"]["projections_concatenated"] == before  # (installed, it found no constant weight)

"""Projections of one input fused into one GEMM under freezing (compiler/concat_projections.py), on CPU: the GEMMs
in Inductor's code, the outputs against eager, and the pass's place in the backend's config."""
import pytest
import torch
import torch._inductor.config as inductor_config
from torch._dynamo.utils import counters
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch._inductor.utils import run_and_get_code

import glacompiler
from glacompiler.compiler.concat_projections import ProjectionConcatPass, with_projection_concat
from glacompiler.demo import install_plain_decode
from glacompiler.models import TinyLM
from glacompiler.presets import tiny_config

# cpp.weight_prepack off: on CPU, freezing would turn every Linear into a oneDNN call before the post-grad passes.
FROZEN = {"freezing": True, "cpp.weight_prepack": False}


def tiny_model(variant: str) -> TinyLM:
    """A tiny model of the package with its plain-PyTorch decode over a filled cache (what bench_backend.py compiles)."""
    torch.manual_seed(0)
    model = TinyLM(tiny_config(variant, n_layers=2)).eval()
    model.setup_cache(2, 64)
    for cache in model.caches:
        for tensor in cache.tensors():
            tensor.normal_()
    return install_plain_decode(model)


def compiled_step(model: TinyLM, settings: dict):
    """(logits, GEMM calls in Inductor's code, projections the pass removed) of a decode step compiled under the
    backend with `settings` in Inductor's config (freezing must be on when Dynamo traces: it keeps the parameters
    as constants only then; in the backend's inductor_config it would come too late)."""
    tokens = torch.tensor([[3], [7]])
    lengths = torch.tensor([40, 64], dtype=torch.int32)
    torch._dynamo.reset()
    before = counters["glacompiler"]["projections_concatenated"]
    with torch.no_grad(), inductor_config.patch(settings):
        logits, code = run_and_get_code(torch.compile(model.decode, backend=glacompiler.backend()), tokens, lengths)
    return logits, "\n".join(code).count("mm("), counters["glacompiler"]["projections_concatenated"] - before


# Projections of a layer's normed input: GQA's q, k and v; GTA's q, tied state and rope key; GLA's query down-
# projection, latent and rope key; and the MLP's gate and up, which freezing concatenates itself on CUDA but on CPU
# only with cpp.enable_concat_linear (off here).
@pytest.mark.parametrize("variant", ["gqa-4", "gta-4", "gla-2"])
def test_frozen_projections_of_one_input_take_one_gemm(variant):
    with torch.no_grad():  # (each model its own: a step writes its token into the cache)
        expected = tiny_model(variant).decode(torch.tensor([[3], [7]]), torch.tensor([40, 64], dtype=torch.int32))
    _, unfrozen_gemms, unfrozen_removed = compiled_step(tiny_model(variant), {"cpp.weight_prepack": False})
    logits, gemms, removed = compiled_step(tiny_model(variant), FROZEN)
    assert unfrozen_removed == 0  # unfrozen weights are graph inputs: concatenating them would copy them each step
    assert removed == 2 * 3  # three GEMMs fewer a layer, two layers
    assert gemms < unfrozen_gemms
    torch.testing.assert_close(logits, expected, rtol=2e-4, atol=2e-4)


class Recorder(CustomGraphPass):
    def __init__(self, uuid=None):
        self.calls, self._uuid = 0, uuid

    def __call__(self, graph):
        self.calls += 1

    def uuid(self):
        return self._uuid


def test_the_pass_goes_in_only_where_the_graph_is_frozen_and_keeps_the_users_pass():
    assert with_projection_concat({"cpp_wrapper": True}) == {"cpp_wrapper": True}
    user = Recorder("mine")
    patches = with_projection_concat({"freezing": True, "post_grad_custom_pre_pass": user})
    installed = patches["post_grad_custom_pre_pass"]
    assert isinstance(installed, ProjectionConcatPass) and installed.chained is user
    with inductor_config.patch(freezing=True):  # (the process's own setting counts too)
        assert isinstance(with_projection_concat({})["post_grad_custom_pre_pass"], ProjectionConcatPass)
    # Cacheable with a chained pass that has a uuid, which the pass's own uuid carries; not without one.
    assert "'mine'" in installed.uuid() and installed.uuid() == ProjectionConcatPass(Recorder("mine")).uuid()
    assert ProjectionConcatPass(Recorder(None)).uuid() is None
    compiled_step(tiny_model("gqa-4"), {**FROZEN, "post_grad_custom_pre_pass": user})
    assert user.calls >= 1  # the user's pass still runs, after ours


def test_freezing_only_in_the_backends_inductor_config_is_reported():
    """Dynamo keeps parameters as constants only where freezing is on while it traces: set in the backend's
    inductor_config it comes too late, and nothing is frozen (so nothing is concatenated)."""
    model = tiny_model("gqa-4")
    torch._dynamo.reset()
    before = counters["glacompiler"]["projections_concatenated"]
    with torch.no_grad(), inductor_config.patch({"cpp.weight_prepack": False}), \
            pytest.warns(RuntimeWarning, match="torch._inductor.config.freezing"):
        torch.compile(model.decode, backend=glacompiler.backend(inductor_config={"freezing": True}))(
            torch.tensor([[3], [7]]), torch.tensor([40, 64], dtype=torch.int32))
    assert counters["glacompiler"]["projections_concatenated"] == before  # (the pass ran: no weight was a constant)

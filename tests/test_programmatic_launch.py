"""Programmatic dependent launch under the gla backend (compiler/programmatic_launch.py), on the CPU: the backend's
default and what overrides it, the first wait in kernel bodies, Inductor's real Triton codegen (for a CPU device,
kernels captured, not run) with every kernel waiting first, and the flag that scopes it covering a lazily compiled
backward graph. The GPU side is in test_backend_gpu.py."""
import importlib
from unittest import mock

import pytest
import torch

import glacompiler
from glacompiler.compiler import programmatic_launch
from test_backend_support import assert_cuda_default, assert_waits_first, fake_cuda_inputs


def test_programmatic_launch_is_the_graphed_default(monkeypatch):
    """Under CUDA graphs on CUDA the backend turns on Inductor's programmatic dependent launch (triton.enable_pdl;
    programmatic_launch.py makes every such kernel wait first); inductor_config and TORCHINDUCTOR_ENABLE_PDL
    choose over it, and without graphs or CUDA it is left alone."""
    monkeypatch.delenv("TORCHINDUCTOR_ENABLE_PDL", raising=False)
    assert programmatic_launch.installed()  # (torch 2.11 to 2.13 have the hook)
    assert_cuda_default("triton.enable_pdl", without_graphs=False)
    monkeypatch.setenv("TORCHINDUCTOR_ENABLE_PDL", "0")
    assert "triton.enable_pdl" not in glacompiler.backend(cudagraphs=True).config_patches(fake_cuda_inputs())


def test_dependent_kernels_wait_before_any_access():
    """A kernel body's wait moves ahead of its first load or store (a fill had none), at the body's indentation,
    Inductor's deferred lines kept; only inside a gla compile and where the kernel launches as a dependent."""
    from torch._inductor.codegen.common import DeferredLine
    from torch._inductor.utils import IndentedBuffer

    from glacompiler.compiler.inductor_guard import inductor_attention_fusion_disabled
    from glacompiler.compiler.programmatic_launch import waiting_first

    wait, launch = "tl.extra.cuda.gdc_wait()", "tl.extra.cuda.gdc_launch_dependents()"

    class Kernel:
        GDC_WAIT = wait
        dependent = True

        def _enable_pdl_codegen(self):
            return self.dependent

    def filtered(lines, kernel=Kernel()):
        body = IndentedBuffer()
        body._lines = list(lines)
        waiting_first(lambda self, code: None)(kernel, body)
        return body._lines

    store = DeferredLine("buf0", "    tl.store(out_ptr0 + (x0), tmp0, None)")
    fill = ["    x0 = xindex", "    tmp0 = 3.0", store]
    loads = ["    tmp0 = tl.load(in_ptr0 + (x0), None)", f"    {wait}", f"    {launch}", "    tl.store(out_ptr0, tmp0)"]
    assert filtered(fill) == fill  # outside a gla compile: Inductor's code
    with inductor_attention_fusion_disabled():
        assert filtered(fill) == [f"    {wait}", *fill[:2], store]
        assert filtered(loads) == [f"    {wait}", loads[0], *loads[2:]]
        assert filtered([""] + loads[:1]) == [f"    {wait}", "", loads[0]]
        not_dependent = Kernel()
        not_dependent.dependent = False
        assert filtered(fill, not_dependent) == fill


def test_no_programmatic_launch_where_inductor_generates_code_elsewhere(monkeypatch):
    """TORCHINDUCTOR_FX_COMPILE_MODE=subprocess moves Inductor's codegen out of this process, away from the
    wrapper and the flag: the backend then leaves PDL off."""
    module = importlib.import_module("torch._inductor.compile_fx")  # (torch._inductor.compile_fx is also a function)
    monkeypatch.delenv("TORCHINDUCTOR_ENABLE_PDL", raising=False)
    assert programmatic_launch.generates_code_here()
    monkeypatch.setattr(module, "_fx_compile_config",
                        module.FxCompileConfig(module.FxCompileMode.SUBPROCESS, False, False))
    assert not programmatic_launch.generates_code_here()
    assert "triton.enable_pdl" not in glacompiler.backend(cudagraphs=True).config_patches(fake_cuda_inputs())


def test_fallback_compile_drops_only_our_choice():
    """A graph compiled without our pass (the pass failed) has no key of ours in Inductor's caches: the PDL the
    backend chose is dropped for it, a user's kept."""
    patches = {"triton.enable_pdl": True, "triton.cudagraphs": True}
    assert glacompiler.backend(cudagraphs=True)._without_our_programmatic_launch(patches) == {"triton.cudagraphs": True}
    users = glacompiler.backend(cudagraphs=True, inductor_config={"triton.enable_pdl": True})
    assert users._without_our_programmatic_launch(patches) == patches


def kernels_of_late_store_fill_flip(inductor_config: dict) -> dict:
    """{name: source} of the Triton kernels Inductor generates, under gla, for a fill, a sine chain, its flip, a
    persistent softmax, a looped reduction and a cumsum (split scan), on a CPU device with PDL codegen as on
    sm_90; the kernels are captured, not compiled or run."""
    from torch._inductor import async_compile
    from torch._inductor.codegen.triton import TritonKernel
    from torch._inductor.utils import fresh_inductor_cache

    sources = {}

    def capture(self, kernel_name, source_code, *args, **kwargs):
        sources[kernel_name] = source_code
        return mock.MagicMock()

    def late_store_fill_flip(x, y):
        a = x
        for _ in range(3):
            a = torch.sin(a) * 1.0001 + 0.25
        return (a, torch.full((4096,), 3.0), a.flip(0) * 2, torch.softmax(y, -1), (x.reshape(4, -1) ** 2).sum(-1),
                torch.cumsum(x, 0))

    config = {"cpu_backend": "triton", "triton.enable_pdl": True, **inductor_config}
    enable_pdl_codegen = staticmethod(lambda: bool(torch._inductor.config.triton.enable_pdl))
    with mock.patch.object(TritonKernel, "_enable_pdl_codegen", enable_pdl_codegen), \
            mock.patch.object(async_compile.AsyncCompile, "triton", capture), \
            mock.patch("torch.utils._triton.triton_hash_with_backend", lambda: "0" * 64), fresh_inductor_cache():
        torch._dynamo.reset()
        compiled = torch.compile(late_store_fill_flip, backend=glacompiler.backend(inductor_config=config))
        compiled(torch.randn(1 << 16), torch.randn(32, 64))
    torch._dynamo.reset()
    return sources


@pytest.mark.parametrize("cooperative", [False, True])
def test_inductor_kernels_wait_first_in_generated_code(cooperative):
    """Inductor's own codegen through the installed wrapper: every kernel (pointwise, fill, looped and persistent
    reductions, split scan; cooperative reductions when forced) waits before its first access, Inductor's trigger
    kept, and the source parses."""
    import ast

    config = {"triton.cooperative_reductions": True, "triton.force_cooperative_reductions": True} if cooperative else {}
    sources = kernels_of_late_store_fill_flip(config)
    kinds = {name.split("_")[1] for name in sources}
    assert {"poi", "spl", "unk" if cooperative else "red"} <= kinds, sorted(sources)
    for name, source in sources.items():
        ast.parse(source)
        body = source[source.index(f"def {name}("):]
        assert_waits_first(name, body)
        if name.startswith("triton_red_") or name.startswith("triton_per_"):
            assert "gdc_launch_dependents()" in body, name


def test_backward_graphs_compile_inside_the_gla_flag(monkeypatch):
    """AOTAutograd compiles a backward graph lazily, at the first backward, outside the backend's call: the flag
    that scopes the first waits (and the attention-fusion guard) is raised for that codegen too."""
    from torch._inductor.graph import GraphLowering
    from torch._inductor.utils import fresh_inductor_cache

    from glacompiler.compiler.inductor_guard import gla_compiling

    seen = []
    codegen = GraphLowering.codegen

    def observed_codegen(self, *args, **kwargs):
        seen.append(("backward" if self.is_backward else "forward", gla_compiling()))
        return codegen(self, *args, **kwargs)

    monkeypatch.setattr(GraphLowering, "codegen", observed_codegen)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with fresh_inductor_cache():
        torch._dynamo.reset()
        loss = torch.compile(model, backend="gla")(torch.randn(4, 8)).sum()
        assert seen == [("forward", True)]
        loss.backward()
    torch._dynamo.reset()
    assert seen == [("forward", True), ("backward", True)]

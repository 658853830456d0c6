"""The C++ wrapper of a GPU graph built with minimal optimisation and without the host's ISA
(glacompiler/compiler/glue_wrapper_build.py): what the wrapped load_async passes on, which ISA codecache's picker
gives inside and outside a glue build, when install() wraps and when it leaves torch alone, and when the backend
lets the ISA probes run ahead. The real build on torch 2.11 is tests/test_backend_gpu.py's."""
import inspect
import threading
from types import SimpleNamespace

import pytest
import torch
from torch._inductor.codecache import CppWrapperCodeCache
from torch._inductor.cpu_vec_isa import invalid_vec_isa

from glacompiler.compiler import glue_wrapper_build


def load_async_as_torch_2_11(cls, main_code, device_type="cpu", submit_fn=None, extra_flags=(), optimized_code=None,
                             needs_vec_isa=None, kernel_needs_vec_isa=None):
    """torch 2.11's signature; its body builds at -O3 unless optimized_code is given (min_optimize), and picks the
    host's ISA through its module's pick_vec_isa for every wrapper."""
    from torch._inductor import codecache

    return dict(main_code=main_code, device_type=device_type, submit_fn=submit_fn, extra_flags=extra_flags,
                optimized_code=optimized_code, min_optimize=optimized_code is not None,
                vec_isa=codecache.pick_vec_isa())


def host_isa_picker():
    """A stand-in of torch's pick_vec_isa that names the host's ISA (no probe)."""
    return "host isa"


@pytest.fixture(autouse=True)
def host_isa(monkeypatch):
    """codecache's pick_vec_isa as install() leaves it: answering "none" inside a glue build, else the host's
    (the setattr also restores torch's after tests whose install() replaces it)."""
    from torch._inductor import codecache

    monkeypatch.setattr(codecache, "pick_vec_isa",
                        glue_wrapper_build.no_isa_inside_glue_builds(host_isa_picker, invalid_vec_isa))


def load_async_as_torch_2_13(cls, main_code, device_type="cpu", submit_fn=None, extra_flags=(), optimized_code=None):
    min_optimize = optimized_code is not None or device_type != "cpu"
    return min_optimize


@pytest.fixture
def fresh_install(monkeypatch):
    """install() as in a new process (each test sets CppWrapperCodeCache.load_async through monkeypatch)."""
    monkeypatch.setattr(glue_wrapper_build.PATCH, "tried", False)
    monkeypatch.setattr(glue_wrapper_build.PATCH, "applied", False)
    monkeypatch.delenv("GLACOMPILER_GLUE_WRAPPER_O1", raising=False)


def test_gpu_glue_asks_for_the_minimal_build():
    from torch._inductor import codecache

    load = glue_wrapper_build.minimal_gpu_glue(load_async_as_torch_2_11)
    assert inspect.signature(load) == inspect.signature(load_async_as_torch_2_11)
    # As Inductor's generated module calls it (keywords), and positionally.
    gpu = load(CppWrapperCodeCache, main_code="glue", device_type="cuda", extra_flags=("-lfoo",))
    assert gpu["optimized_code"] == "" and gpu["min_optimize"] and gpu["extra_flags"] == ("-lfoo",)
    assert gpu["vec_isa"] is invalid_vec_isa and codecache.pick_vec_isa() == "host isa"  # only during the build
    assert load(CppWrapperCodeCache, "glue", "cuda:1")["min_optimize"]
    # A CPU wrapper, and a GPU wrapper that brings CPU kernels (built at -O3 beside -O1 glue): as torch has it.
    cpu = load(CppWrapperCodeCache, main_code="glue", device_type="cpu")
    assert cpu["optimized_code"] is None and cpu["vec_isa"] == "host isa"
    assert load(CppWrapperCodeCache, main_code="glue")["optimized_code"] is None
    kernels = load(CppWrapperCodeCache, main_code="glue", device_type="cuda", optimized_code="kernels")
    assert kernels["optimized_code"] == "kernels" and kernels["vec_isa"] == "host isa"
    # CPU kernels defined in the wrapper's own code (cpp_wrapper_build_separate off, torch's default).
    for main_code in ('extern "C" void cpp_fused_add_0(const float* in_ptr0)', "auto t = at::vec::Vectorized<float>",
                      "tmp0 = prod_masked_reduce(x, mask);"):
        defined = load(CppWrapperCodeCache, main_code=main_code, device_type="cuda")
        assert defined["optimized_code"] is None and defined["vec_isa"] == "host isa"
    needs = load(CppWrapperCodeCache, main_code="glue", device_type="cuda", needs_vec_isa=True)
    assert needs["optimized_code"] is None and needs["vec_isa"] == "host isa"


def test_the_isa_comes_back_when_the_build_fails():
    """A load_async that raises (a C++ compile error the backend retries with the Python wrapper) leaves the
    picker asking torch again."""
    from torch._inductor import codecache

    seen = []

    def failing(cls, main_code, device_type="cpu", submit_fn=None, extra_flags=(), optimized_code=None):
        seen.append(codecache.pick_vec_isa())
        raise RuntimeError("C++ compile error")

    load = glue_wrapper_build.minimal_gpu_glue(failing)
    with pytest.raises(RuntimeError, match="C\\+\\+ compile error"):
        load(CppWrapperCodeCache, main_code="glue", device_type="cuda")
    assert seen == [invalid_vec_isa] and codecache.pick_vec_isa() == "host isa"


def test_another_threads_pick_during_a_glue_build_is_the_hosts():
    """The glue build's "no ISA" belongs to its thread: a pick on another thread meanwhile, and on the building
    thread afterwards, is torch's."""
    from torch._inductor import codecache

    inside, release, picks = threading.Event(), threading.Event(), {}

    def blocking(cls, main_code, device_type="cpu", submit_fn=None, extra_flags=(), optimized_code=None):
        picks["glue"] = codecache.pick_vec_isa()
        inside.set()
        assert release.wait(10)
        return picks["glue"]

    builder = threading.Thread(target=glue_wrapper_build.minimal_gpu_glue(blocking),
                               args=(CppWrapperCodeCache, "glue", "cuda"))
    builder.start()
    assert inside.wait(10)
    picks["other thread"] = codecache.pick_vec_isa()
    release.set()
    builder.join(10)
    assert picks == {"glue": invalid_vec_isa, "other thread": "host isa"}
    assert codecache.pick_vec_isa() == "host isa"


@pytest.mark.parametrize("case", ["wrapped", "torch_decides", "unsure"])
def test_whether_gpu_glue_picks_an_isa(fresh_install, monkeypatch, case):
    """The backend's pre-probe of the host's ISAs is skipped for CUDA graphs only where the glue picks none."""
    from torch._inductor import codecache

    if case == "wrapped":
        monkeypatch.setattr(glue_wrapper_build.PATCH, "applied", True)
        monkeypatch.delattr(codecache, "_resolve_needs_vec_isa", raising=False)
    elif case == "torch_decides":  # torch 2.13 on: load_async asks whether a wrapper needs an ISA
        monkeypatch.setattr(codecache, "_resolve_needs_vec_isa", lambda *args: False, raising=False)
    else:
        monkeypatch.delattr(codecache, "_resolve_needs_vec_isa", raising=False)
    assert glue_wrapper_build.gpu_glue_picks_no_isa() == (case != "unsure")


def on(device_type: str):
    return SimpleNamespace(device=torch.device(device_type))


@pytest.mark.parametrize("devices, picks", [
    (["cuda", "cuda"], False), (["xpu"], False), (["cpu"], True), (["cuda", "cpu"], True), ([], True)])
@pytest.mark.parametrize("glue_picks_none", [True, False])
def test_which_graphs_may_pick_the_hosts_isa(monkeypatch, devices, picks, glue_picks_none):
    """The backend lets the probes run ahead unless every tensor input is on an accelerator and GPU glue picks no
    ISA; symbolic and integer inputs do not count."""
    monkeypatch.setattr(glue_wrapper_build, "gpu_glue_picks_no_isa", lambda: glue_picks_none)
    inputs = [on(device) for device in devices] + [3]
    assert glue_wrapper_build.wrapper_picks_isa(inputs) == (picks or not glue_picks_none)


def test_install_wraps_a_torch_that_builds_gpu_glue_at_o3(fresh_install, monkeypatch):
    from torch._inductor import codecache

    monkeypatch.setattr(CppWrapperCodeCache, "load_async", classmethod(load_async_as_torch_2_11))
    monkeypatch.setattr(codecache, "pick_vec_isa", host_isa_picker)  # torch's own, before install()
    glue_wrapper_build.install()
    assert glue_wrapper_build.installed()
    assert codecache.pick_vec_isa.__wrapped__ is host_isa_picker
    gpu = CppWrapperCodeCache.load_async(main_code="glue", device_type="cuda")
    cpu = CppWrapperCodeCache.load_async(main_code="glue", device_type="cpu")
    assert gpu["min_optimize"] and gpu["vec_isa"] is invalid_vec_isa
    assert not cpu["min_optimize"] and cpu["vec_isa"] == "host isa"
    glue_wrapper_build.install()  # once per process
    assert CppWrapperCodeCache.load_async.__func__.__wrapped__ is load_async_as_torch_2_11
    assert codecache.pick_vec_isa.__wrapped__ is host_isa_picker


@pytest.mark.parametrize("case", ["torch_2_13", "unknown_signature", "opted_out"])
def test_install_leaves_torch_alone(fresh_install, monkeypatch, case):
    original = {"torch_2_13": load_async_as_torch_2_13, "opted_out": load_async_as_torch_2_11,
                "unknown_signature": lambda cls, code, device="cpu": None}[case]
    monkeypatch.setattr(CppWrapperCodeCache, "load_async", classmethod(original))
    if case == "opted_out":
        monkeypatch.setenv("GLACOMPILER_GLUE_WRAPPER_O1", "0")
    from torch._inductor import codecache

    picker = codecache.pick_vec_isa
    glue_wrapper_build.install()
    assert not glue_wrapper_build.installed()
    assert CppWrapperCodeCache.load_async.__func__ is original and codecache.pick_vec_isa is picker


class Recorded(Exception):
    """Raised by the stand-in of CppTorchDeviceOptions once it has seen the main build's options."""


@pytest.mark.parametrize("wrapped", [False, True])
def test_this_torchs_build_of_gpu_glue_is_minimal(fresh_install, monkeypatch, wrapped):
    """Through this torch's own load_async (torch 2.13 on CI: already minimal for non-CPU wrappers, wrapped anyway
    in the second case; torch 2.11's is wrapped in both, as install() does): the main build option of GPU glue is
    minimal, a CPU wrapper's is not, and the CPU kernels' cache is untouched. The options' constructor stops the
    build."""
    from torch._inductor import codecache, cpp_builder
    from torch._inductor.cpu_vec_isa import invalid_vec_isa

    options = []

    def record(self, *args, **kwargs):
        options.append(kwargs)
        raise Recorded

    # torch's own load_async, as CppWrapperCodeCache inherits it (the CPU kernels' caches share it).
    defining = next(cls for cls in CppWrapperCodeCache.__mro__[1:] if "load_async" in cls.__dict__)
    parent_load_async = defining.__dict__["load_async"]
    host = SimpleNamespace(name="the host's ISA")  # what torch's pick would return, without probing
    monkeypatch.setattr(cpp_builder.CppTorchDeviceOptions, "__init__", record)
    monkeypatch.setattr(codecache, "pick_vec_isa", lambda: host)
    monkeypatch.setattr(CppWrapperCodeCache, "load_async", parent_load_async)  # (restored after the test)
    if wrapped:
        monkeypatch.setattr(glue_wrapper_build, "_builds_gpu_glue_minimally", lambda load_async: False)
    glue_wrapper_build.install()
    # (torch 2.11's own load_async builds GPU glue fully: install() wraps it in both cases)
    assert glue_wrapper_build.installed() == (
        wrapped or not glue_wrapper_build._builds_gpu_glue_minimally(parent_load_async.__func__))
    for device_type in ("cuda", "cpu"):
        with pytest.raises(Recorded):
            CppWrapperCodeCache.load_async("int glue;", device_type)
    assert [(o["device_type"], bool(o.get("min_optimize"))) for o in options] == [("cuda", True), ("cpu", False)]
    # GPU glue gets no ISA, through this torch or through the wrapper; the CPU wrapper gets the host's.
    assert [o["vec_isa"] for o in options] == [invalid_vec_isa, host]
    assert defining.__dict__["load_async"] is parent_load_async
    assert codecache.CppPythonBindingsCodeCache.load_async.__func__ is parent_load_async.__func__

"""The C++ wrapper's precompiled header asked for on a thread ahead of the graph's wrapper
(glacompiler/compiler/wrapper_header_prewarm.py): what the thread asks Inductor's wrapper cache for and what it
leaves in it, when nothing is started, that failures stay on the thread; and on a GPU, that the graph's own wrapper
asks for the very header the thread made."""
import threading

import pytest
import torch
from torch._inductor.codecache import CppWrapperCodeCache

from glacompiler.compiler import wrapper_header_prewarm


@pytest.fixture
def fresh_process(monkeypatch):
    """start() as in a new process."""
    monkeypatch.setattr(wrapper_header_prewarm, "_started", {})
    monkeypatch.delenv("GLACOMPILER_PREWARM_WRAPPER_HEADER", raising=False)


@pytest.fixture
def asked(monkeypatch, fresh_process):
    """The wrapper cache's load_async as a recorder: (main_code, device_type, thread name) of each call; each call
    leaves its loader in the cache, as torch's does."""
    calls = []

    def load_async(cls, main_code, device_type="cpu", *args, **kwargs):
        calls.append((main_code, device_type, threading.current_thread().name))

        def loader():
            raise AssertionError("the stub is never built")

        cls.cache[f"key of {len(calls)}"] = loader
        return loader

    monkeypatch.setattr(CppWrapperCodeCache, "load_async", classmethod(load_async))
    monkeypatch.setattr(CppWrapperCodeCache, "cache", {"a graph's wrapper": "its loader"})
    return calls


def test_the_thread_asks_for_the_header_and_leaves_no_stub_behind(asked):
    thread = wrapper_header_prewarm.start({"cpp_wrapper": True}, "cuda")
    thread.join(timeout=30)
    assert not thread.is_alive() and thread.daemon
    assert asked == [(wrapper_header_prewarm.STUB_SOURCE, "cuda", "glacompiler-wrapper-header-cuda")]
    assert CppWrapperCodeCache.cache == {"a graph's wrapper": "its loader"}
    assert wrapper_header_prewarm.start({"cpp_wrapper": True}, "cuda") is None  # once per process and device type
    other = wrapper_header_prewarm.start({"cpp_wrapper": True}, "xpu")
    other.join(timeout=30)
    assert [device for _, device, _ in asked] == ["cuda", "xpu"]


@pytest.mark.parametrize("patches, opt_out", [({"cpp_wrapper": False}, False),
                                              ({"cpp_wrapper": True, "cpp_cache_precompile_headers": False}, False),
                                              ({"cpp_wrapper": True}, True)])
def test_nothing_starts_without_a_header_to_make(asked, monkeypatch, patches, opt_out):
    if opt_out:
        monkeypatch.setenv("GLACOMPILER_PREWARM_WRAPPER_HEADER", "0")
    with torch._inductor.config.patch(cpp_wrapper=False):
        assert wrapper_header_prewarm.start(patches, "cuda") is None
    assert asked == [] and wrapper_header_prewarm._started == {}


def test_a_failure_stays_on_the_thread(monkeypatch, fresh_process, caplog):
    def failing(cls, main_code, device_type="cpu", *args, **kwargs):
        raise RuntimeError("no compiler")

    monkeypatch.setattr(CppWrapperCodeCache, "load_async", classmethod(failing))
    failures = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    with caplog.at_level("DEBUG", logger="glacompiler"):
        thread = wrapper_header_prewarm.start({"cpp_wrapper": True}, "cuda")
        thread.join(timeout=30)
    assert failures == [] and "left to Inductor" in caplog.text and "no compiler" in caplog.text


def test_a_thread_that_cannot_start_is_tried_again_later(asked, monkeypatch):
    def no_thread(self):
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as threads:
        threads.setattr(threading.Thread, "start", no_thread)
        assert wrapper_header_prewarm.start({"cpp_wrapper": True}, "cuda") is None
    assert wrapper_header_prewarm._started == {}
    wrapper_header_prewarm.start({"cpp_wrapper": True}, "cuda").join(timeout=30)
    assert [device for _, device, _ in asked] == ["cuda"]


def test_exit_waits_for_a_build_in_progress(monkeypatch, fresh_process):
    """At exit a header build still running gets EXIT_WAIT_S to finish (a process cut off mid-build would leave a
    header that later builds on the machine reject)."""
    finished = threading.Event()
    build = threading.Thread(target=lambda: (threading.Event().wait(0.3), finished.set()), daemon=True)
    build.start()
    monkeypatch.setitem(wrapper_header_prewarm._started, "cuda", build)
    wrapper_header_prewarm._wait_for_builds()
    assert finished.is_set()


def test_the_backend_starts_it_for_accelerator_graphs_only(monkeypatch):
    """A CPU graph (its wrapper picks the host's ISA, and may define CPU kernels) starts nothing."""
    import glacompiler
    from glacompiler.compiler import torch_compile_backend

    started = []
    monkeypatch.setattr(torch_compile_backend, "prewarm_wrapper_header",
                        lambda patches, device_type: started.append(device_type))
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: torch.sin(x) + 1, backend=glacompiler.backend(cpp_wrapper=False))
    x = torch.randn(8)
    torch.testing.assert_close(compiled(x), torch.sin(x) + 1)
    assert started == []
    assert torch_compile_backend._accelerator_type([torch.empty(1, device="meta"), 3]) == "meta"
    assert torch_compile_backend._accelerator_type([]) == "cuda"


@pytest.mark.gpu
def test_the_graphs_wrapper_asks_for_the_header_the_thread_made(cuda_device, monkeypatch, fresh_process):
    """From an empty in-process header cache and empty Inductor caches, a CUDA decode graph under the backend's
    C++ wrapper: the thread asks for a precompiled header first, and the graph's wrapper asks for that one (the
    same header, build flags and command line), so it finds it made; the graph is right."""
    from torch._inductor import codecache
    from torch._inductor.utils import fresh_inductor_cache

    from test_backend_gpu import check_fa_rule, on_gpu
    from test_backend_patterns import CASES
    from test_backend_support import compile_and_count

    precompile = codecache._precompile_header
    precompile.cache_clear()
    requests = []

    def recording(*args, **kwargs):
        requests.append((threading.current_thread().name, args, sorted(kwargs.items(), key=str)))
        return precompile(*args, **kwargs)

    monkeypatch.setattr(codecache, "_precompile_header", recording)
    fn, make_inputs, *_ = CASES["sdpa_enable_gqa"]
    torch.manual_seed(0)
    inputs = make_inputs()
    with fresh_inductor_cache():
        output, _, records = compile_and_count(fn, *on_gpu(inputs))
    wrapper_header_prewarm._started["cuda"].join(timeout=120)
    threads = [thread for thread, _, _ in requests]
    assert threads[0] == "glacompiler-wrapper-header-cuda" and "MainThread" in threads, threads
    made = requests[0][1:]
    assert all((args, kwargs) == made for thread, args, kwargs in requests if thread == "MainThread"), requests
    assert [r.status for r in records] == ["rewritten"]
    with torch.no_grad():
        check_fa_rule(output, fn(*on_gpu(inputs)), fn(*on_gpu(inputs, torch.float32)).float())

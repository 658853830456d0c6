"""Test doubles for kernels/common/triton_launch.py and binary_launch.py on CPU: the JIT function, the compiled
kernel and the driver, and the launch state (memos, flags) made fresh for a test."""
from triton.compiler import CompiledKernel
from triton.runtime.jit import JITFunction

from glacompiler.kernels.common import triton_launch
from glacompiler.memo import BoundedMemo


def _kernel_source(X, Y, n, A: "tl.constexpr", B: "tl.constexpr"):  # noqa: F821 - the parameters are what counts
    pass


class FakeCompiled(CompiledKernel):
    def __init__(self, fail_with=None):  # no binary: only what the direct launch reads
        self.function, self.packed_metadata, self.direct_calls, self.fail_with = "function", "metadata", [], fail_with
        self.module = None  # nothing loaded, nothing for CompiledKernel.__del__ to unload

    def launch_metadata(self, grid, stream, *args):
        return ("metadata of", grid, stream, args)

    def run(self, *launch_args):
        if self.fail_with is not None:
            raise self.fail_with
        self.direct_calls.append(launch_args)


class FakeJIT(JITFunction):
    def __init__(self, compiled, do_not_specialize=None):
        super().__init__(_kernel_source, do_not_specialize=do_not_specialize)
        self.compiled, self.jit_calls = compiled, []

    def __getitem__(self, grid):
        def run(*args, num_warps, num_stages, **constexprs):
            self.jit_calls.append((grid, args, constexprs, num_warps, num_stages))
            return self.compiled
        return run


class FakeDriver:
    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 1234


def install_fresh_launch_state(monkeypatch):
    """The fake driver, empty memos, direct launches on."""
    from triton.runtime.driver import driver

    monkeypatch.setattr(driver, "_active", FakeDriver(), raising=False)
    monkeypatch.setattr(type(driver), "active", property(lambda self: FakeDriver()), raising=False)
    monkeypatch.setattr(triton_launch, "_compiled", BoundedMemo(4096))
    monkeypatch.setattr(triton_launch, "_constexpr_names", {})
    monkeypatch.setattr(triton_launch, "_unspecialised", {})
    monkeypatch.setattr(triton_launch, "_direct_launch_enabled", True)

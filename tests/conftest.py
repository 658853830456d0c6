import os

import torch

# Triton picks interpreted or compiled functions when it is imported. Without a GPU, import it in
# interpreter mode once, so tests that opt in (the `interpret_kernels` fixture sets TRITON_INTERPRET=1,
# which the op reads per call) run the generated kernels on CPU, while every other test keeps the op's
# PyTorch CPU path.
if not torch.cuda.is_available():
    _previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    import triton  # noqa: F401

    if _previous is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _previous

import pytest  # noqa: E402
import torch._functorch.config  # noqa: E402
import torch._inductor.config  # noqa: E402

# Tests observe what the pass does at compile time (its records, counters, injected failures), so Inductor's
# on-disk caches stay off here: a graph cached by an earlier test or run would skip the pass. The cache tests
# (test_compile_cache.py) turn them on, in a temporary cache directory.
torch._inductor.config.fx_graph_cache = False
torch._functorch.config.enable_autograd_cache = False


@pytest.fixture
def interpret_kernels(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("interpreter tests run on CPU-only machines; the GPU runs the compiled kernels")
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def debug_checks():
    """glacompiler.set_debug_checks, for a test to turn the value checks on where it wants them; the setting from
    before the test comes back after it."""
    from glacompiler.op.validation import debug_checks_enabled, set_debug_checks

    previous = debug_checks_enabled()
    yield set_debug_checks
    set_debug_checks(previous)


@pytest.fixture
def cuda_device():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda")

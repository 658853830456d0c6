"""kernels/common/triton_launch.py on CPU: which launches go through triton's JIT and which call the compiled
binary directly, with test doubles for the JIT function, the compiled kernel and the driver."""
import pytest
import torch

from glacompiler.kernels.common import triton_launch

from launch_doubles import FakeCompiled, FakeDriver, FakeJIT, install_fresh_launch_state


@pytest.fixture
def fresh_launch_state(monkeypatch):
    install_fresh_launch_state(monkeypatch)


def _args(x, y, n=7):
    return (x, y, n)


def test_first_launch_jits_then_direct_in_signature_order(fresh_launch_state):
    compiled = FakeCompiled()
    kernel = FakeJIT(compiled)
    x, y = torch.zeros(8), torch.zeros(8)
    for _ in range(3):
        # constexprs given out of signature order: the direct launch must still pass A before B
        assert triton_launch.launch(kernel, (2, 3), _args(x, y), {"B": 5, "A": 4}, 4, 2) is compiled
    assert len(kernel.jit_calls) == 1
    from triton import knobs

    metadata = ("metadata of", (2, 3), 1234, (x, y, 7, 4, 5))
    hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    assert compiled.direct_calls == [(2, 3, 1, 1234, "function", "metadata", metadata, *hooks, x, y, 7, 4, 5)] * 2


def test_unspecialised_ints_key_by_width_only(fresh_launch_state):
    """A do_not_specialize int (a growing cache's capacity) may change at every call: the direct path stays,
    with the new value passed; only a change of width (int32 -> int64) goes back to the JIT."""
    compiled = FakeCompiled()
    kernel = FakeJIT(compiled, do_not_specialize=["n"])
    x, y = torch.zeros(16), torch.zeros(16)
    for n in (7, 8, 16, 1, 2**31 - 1):
        triton_launch.launch(kernel, (1,), _args(x, y, n=n), {"A": 1, "B": 2}, 4, 2)
    assert len(kernel.jit_calls) == 1 and [call[-3] for call in compiled.direct_calls] == [8, 16, 1, 2**31 - 1]
    triton_launch.launch(kernel, (1,), _args(x, y, n=2**31), {"A": 1, "B": 2}, 4, 2)
    assert len(kernel.jit_calls) == 2


@pytest.mark.parametrize("change", ["int value", "dtype", "alignment", "constexpr", "warps", "stages"])
def test_any_specialisation_change_goes_back_to_the_jit(fresh_launch_state, change):
    kernel = FakeJIT(FakeCompiled())
    x, y = torch.zeros(16), torch.zeros(16)
    triton_launch.launch(kernel, (1,), _args(x, y), {"A": 1, "B": 2}, 4, 2)
    args, constexprs, warps, stages = _args(x, y), {"A": 1, "B": 2}, 4, 2
    if change == "int value":
        args = _args(x, y, n=16)
    elif change == "dtype":
        args = _args(x.half(), y)
    elif change == "alignment":
        args = _args(torch.zeros(17)[1:], y)  # 4 bytes past an aligned allocation
    elif change == "constexpr":
        constexprs = {"A": 1, "B": 3}
    elif change == "warps":
        warps = 8
    else:
        stages = 3
    triton_launch.launch(kernel, (1,), args, constexprs, warps, stages)
    assert len(kernel.jit_calls) == 2 and kernel.compiled.direct_calls == []


def test_fresh_allocations_of_the_same_layout_launch_directly(fresh_launch_state):
    kernel = FakeJIT(FakeCompiled())
    for _ in range(2):
        triton_launch.launch(kernel, (1,), _args(torch.randn(32), torch.randn(32)), {"A": 1, "B": 2}, 4, 2)
    assert len(kernel.jit_calls) == 1 and len(kernel.compiled.direct_calls) == 1


def test_a_refused_direct_launch_turns_the_fast_path_off(fresh_launch_state, caplog):
    kernel = FakeJIT(FakeCompiled(fail_with=TypeError("launcher takes 12 arguments")))
    x, y = torch.zeros(8), torch.zeros(8)
    for _ in range(3):
        triton_launch.launch(kernel, (1,), _args(x, y), {"A": 1, "B": 2}, 4, 2)
    assert len(kernel.jit_calls) == 3 and not triton_launch._direct_launch_enabled
    assert "direct kernel launches turned off" in caplog.text


def test_constexprs_must_match_the_parameters(fresh_launch_state):
    kernel = FakeJIT(FakeCompiled())
    x, y = torch.zeros(8), torch.zeros(8)
    triton_launch.launch(kernel, (1,), _args(x, y), {"A": 1, "C": 2}, 4, 2)
    with pytest.raises(ValueError, match="do not match"):
        triton_launch.launch(kernel, (1,), _args(x, y), {"A": 1, "C": 2}, 4, 2)


def test_the_memo_is_bounded(fresh_launch_state, monkeypatch):
    monkeypatch.setattr(triton_launch._compiled, "limit", 3)
    kernel = FakeJIT(FakeCompiled())
    x, y = torch.zeros(8), torch.zeros(8)
    for n in range(10):  # a stride that grows every step
        triton_launch.launch(kernel, (1,), _args(x, y, n=n), {"A": 1, "B": 2}, 4, 2)
    assert len(triton_launch._compiled) <= 3


class FakeDescriptor:
    """What the key reads of a TMA descriptor: the base tensor, the block shape and the shared layout."""

    def __init__(self, base, block_shape, layout):
        self.base, self.block_shape, self.layout = base, block_shape, layout


def test_tma_descriptors_key_on_dtype_block_and_layout(fresh_launch_state):
    kernel = FakeJIT(FakeCompiled())
    x = torch.zeros(8)

    def launch_with(descriptor):
        triton_launch.launch(kernel, (1,), (x, descriptor, 7), {"A": 1, "B": 2}, 4, 2)

    launch_with(FakeDescriptor(torch.zeros(64, 8), [16, 8], "swizzle 128"))
    launch_with(FakeDescriptor(torch.randn(128, 8), [16, 8], "swizzle 128"))  # another cache, same specialisation
    assert len(kernel.jit_calls) == 1 and len(kernel.compiled.direct_calls) == 1
    launch_with(FakeDescriptor(torch.zeros(64, 8), [32, 8], "swizzle 128"))
    launch_with(FakeDescriptor(torch.zeros(64, 8), [16, 8], "swizzle 64"))
    launch_with(FakeDescriptor(torch.zeros(64, 8).half(), [16, 8], "swizzle 128"))
    assert len(kernel.jit_calls) == 4


def test_a_prepared_launch_jits_once_then_calls_the_binary_with_no_key(fresh_launch_state, monkeypatch):
    compiled = FakeCompiled()
    fresh = FakeJIT(compiled)
    prepared = triton_launch.PreparedLaunch(fresh, (2, 3), {"B": 5, "A": 4}, 4, 2)
    x, y = torch.zeros(8), torch.zeros(8)
    assert prepared((x, y, 7)) is compiled and len(fresh.jit_calls) == 1
    monkeypatch.setattr(triton_launch, "specialisation_key", None)  # a repeat builds no key
    for _ in range(2):
        assert prepared((x, y, 7)) is compiled
    from triton import knobs

    metadata = ("metadata of", (2, 3), 1234, (x, y, 7, 4, 5))
    hooks = (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    assert compiled.direct_calls == [(2, 3, 1, 1234, "function", "metadata", metadata, *hooks, x, y, 7, 4, 5)] * 2
    assert len(fresh.jit_calls) == 1


def test_a_prepared_launch_on_another_current_device_goes_through_the_jit(fresh_launch_state, monkeypatch):
    kernel = FakeJIT(FakeCompiled())
    prepared = triton_launch.PreparedLaunch(kernel, (1,), {"A": 1, "B": 2}, 4, 2)
    x, y = torch.zeros(8), torch.zeros(8)
    prepared((x, y, 7))
    monkeypatch.setattr(FakeDriver, "get_current_device", lambda self: 1)
    prepared((x, y, 7))
    assert len(kernel.jit_calls) == 2 and kernel.compiled.direct_calls == []


def test_a_refused_prepared_launch_turns_the_fast_path_off(fresh_launch_state, caplog):
    kernel = FakeJIT(FakeCompiled(fail_with=TypeError("launcher takes 12 arguments")))
    prepared = triton_launch.PreparedLaunch(kernel, (1,), {"A": 1, "B": 2}, 4, 2)
    for _ in range(3):
        prepared((torch.zeros(8), torch.zeros(8), 7))
    assert len(kernel.jit_calls) == 3 and not triton_launch._direct_launch_enabled
    assert "direct kernel launches turned off" in caplog.text

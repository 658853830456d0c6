"""kernels/common/binary_launch.py on CPU, with a stand-in for triton 3.6's CudaLauncher (a module with its
launcher format, its descriptor wrapper's closure and a C launch function that records its arguments). The GPU
test (test_latent_hopper_gpu.py::test_repeats_launch_the_binary_with_each_caches_descriptors) checks the real one."""
import sys
import types

import pytest
import torch

from glacompiler.kernels.common import triton_launch
from glacompiler.kernels.common.binary_launch import (KNOWN_BASE_ARGS_FORMAT, BinaryLaunch, jit_forms_of,
                                                     launch_hooks_set, layout_known)

from launch_doubles import FakeCompiled, FakeJIT, install_fresh_launch_state

BASE_ARGS = len(KNOWN_BASE_ARGS_FORMAT)
FAKE_DRIVER = types.ModuleType("fake_triton_driver")  # registered in sys.modules by the fake_driver fixture
FAKE_DRIVER._BASE_ARGS_FORMAT = KNOWN_BASE_ARGS_FORMAT
FAKE_DRIVER.encoded = []


def _make_tensordesc_arg(arg, metadata):
    FAKE_DRIVER.encoded.append((arg, metadata))
    return [("map of", arg), 8, 64]  # the encoding, then the descriptor's shape and strides


FAKE_DRIVER.make_tensordesc_arg = _make_tensordesc_arg


class CLaunch:
    """Stands for the C launch function: callable, no Python code of its own."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)


def _wrap(launcher, tensordesc_indices, tensordesc_meta):
    def inner(*args):  # what triton 3.6's wrap_handle_tensordesc.inner does, with its three closure cells
        final_args = list(args[:BASE_ARGS])
        descriptor = 0
        for i, arg in enumerate(args[BASE_ARGS:]):
            if i in tensordesc_indices:
                final_args.extend(FAKE_DRIVER.make_tensordesc_arg(arg, tensordesc_meta[descriptor]))
                descriptor += 1
            else:
                final_args.append(arg)
        return launcher(*final_args)
    return inner


class FakeCudaLauncher:
    def __init__(self, descriptor_positions=(), metadata=None, scratch=0, profile_scratch=0, c_launch=None):
        self.c_launch = c_launch or CLaunch()
        self.launch = (_wrap(self.c_launch, set(descriptor_positions), metadata) if descriptor_positions
                       else self.c_launch)
        self.global_scratch_size, self.profile_scratch_size = scratch, profile_scratch
        self.launch_cooperative_grid, self.launch_pdl = False, True

    def __call__(self, gridX, gridY, gridZ, stream, function, *args):  # triton 3.6's, with no scratch to allocate
        self.launch(gridX, gridY, gridZ, stream, function, self.launch_cooperative_grid, self.launch_pdl, None, None,
                    *args)


FakeCudaLauncher.__module__ = FAKE_DRIVER.__name__


class CompiledWithLauncher(FakeCompiled):
    def __init__(self, launcher):
        super().__init__()
        self.launcher = launcher

    @property
    def run(self):
        return self.launcher

    def launch_metadata(self, grid, stream, *args):
        return None  # what triton 3.6 returns with no launch hook


@pytest.fixture(autouse=True)
def fake_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, FAKE_DRIVER.__name__, FAKE_DRIVER)
    FAKE_DRIVER.encoded.clear()


@pytest.fixture
def fresh_launch_state(monkeypatch):
    install_fresh_launch_state(monkeypatch)


def test_no_descriptors_calls_the_c_function_with_the_known_layout():
    compiled = CompiledWithLauncher(FakeCudaLauncher())
    binary = BinaryLaunch.for_compiled(compiled, (2, 3), {})
    x = torch.zeros(4)
    binary(77, (x, 5, "constexpr"))
    assert compiled.launcher.c_launch.calls == [
        (2, 3, 1, 77, "function", False, True, None, None, "metadata", None, None, None, x, 5, "constexpr")]


def test_descriptors_are_encoded_once_per_position_and_address():
    compiled = CompiledWithLauncher(FakeCudaLauncher((1, 2), [{"swizzle": 128}, {"swizzle": 64}]))
    made = []

    def view(name):
        def make(tensor):
            made.append((name, tensor.data_ptr()))
            return (name, tensor.data_ptr())
        return make

    binary = BinaryLaunch.for_compiled(compiled, (1, 1, 1), {1: view("k"), 2: view("rope")})
    caches = [(torch.zeros(16), torch.zeros(8)) for _ in range(2)]
    for k, rope in caches + caches:
        binary(0, ("q", k, rope, 9))
    first, second = caches
    assert made == [("k", first[0].data_ptr()), ("rope", first[1].data_ptr()),
                    ("k", second[0].data_ptr()), ("rope", second[1].data_ptr())]
    assert [metadata for _, metadata in FAKE_DRIVER.encoded] == [{"swizzle": 128}, {"swizzle": 64}] * 2
    calls = compiled.launcher.c_launch.calls
    assert len(calls) == 4 and calls[0] == calls[2] and calls[1] == calls[3] and calls[0] != calls[1]
    k, rope = first
    assert calls[0][13:] == ("q", ("map of", ("k", k.data_ptr())), 8, 64, ("map of", ("rope", rope.data_ptr())),
                             8, 64, 9)


@pytest.mark.parametrize("launcher, descriptors", [
    (FakeCudaLauncher(scratch=256), {}),  # Triton allocates scratch per launch
    (FakeCudaLauncher(profile_scratch=64), {}),
    (FakeCudaLauncher((1,), [{"swizzle": 128}]), {}),  # a descriptor the caller did not declare
    (FakeCudaLauncher(), {1: lambda t: t}),  # a declared descriptor the binary does not take
    (FakeCudaLauncher((1,), [None]), {1: lambda t: t}),  # not encoded by Triton: the memo would hold the tensor
    (FakeCudaLauncher((1, 2), [{"swizzle": 128}, None]), {1: lambda t: t, 2: lambda t: t}),
    (FakeCudaLauncher((1,), None), {1: lambda t: t}),
])
def test_launchers_it_cannot_call_directly(launcher, descriptors):
    assert BinaryLaunch.for_compiled(CompiledWithLauncher(launcher), (1,), descriptors) is None


def test_another_launcher_layout_is_not_called_directly(monkeypatch):
    monkeypatch.setattr(FAKE_DRIVER, "_BASE_ARGS_FORMAT", "iiiKKppOOOOOOOO")
    assert BinaryLaunch.for_compiled(CompiledWithLauncher(FakeCudaLauncher()), (1,), {}) is None
    monkeypatch.delattr(FAKE_DRIVER, "_BASE_ARGS_FORMAT")
    assert BinaryLaunch.for_compiled(CompiledWithLauncher(FakeCudaLauncher()), (1,), {}) is None
    # FakeCompiled.run is a Python method, not a CudaLauncher: no layout to check
    assert BinaryLaunch.for_compiled(FakeCompiled(), (1,), {}) is None


def test_jit_forms_replace_only_their_positions():
    assert jit_forms_of(("a", "b", "c"), {1: str.upper}) == ("a", "B", "c")
    args = ("a", "b")
    assert jit_forms_of(args, {}) is args


def test_prepared_launch_calls_the_binary_and_materialises_descriptors_for_the_jit(fresh_launch_state):
    compiled = CompiledWithLauncher(FakeCudaLauncher((1,), [{"swizzle": 32}]))
    kernel = FakeJIT(compiled)
    prepared = triton_launch.PreparedLaunch(kernel, (2,), {"A": 1, "B": 2}, 4, 2,
                                            descriptors={1: lambda tensor: ("descriptor of", tensor)})
    x, cache = torch.zeros(4), torch.zeros(8)
    for _ in range(3):
        assert prepared((x, cache, 7)) is compiled
    assert [call[1] for call in kernel.jit_calls] == [(x, ("descriptor of", cache), 7)]
    direct = compiled.launcher.c_launch.calls
    assert len(direct) == 2 and len(direct[0]) == 13 + 7 and direct[0][:3] == (2, 1, 1)
    arg_x, (label, (made, arg_cache)), *rest = direct[0][13:]
    # a tensor goes as its address, a descriptor's tensor to its encoder
    assert arg_x == x.data_ptr() and arg_cache is cache and (label, made) == ("map of", "descriptor of")
    assert rest == [8, 64, 7, 1, 2]  # the descriptor's shape and strides, the int, the constexprs in order
    assert len(FAKE_DRIVER.encoded) == 1


def test_prepared_launch_leaves_the_binary_to_triton_while_launch_hooks_are_set(fresh_launch_state, monkeypatch):
    from triton import knobs

    compiled = CompiledWithLauncher(FakeCudaLauncher())
    kernel = FakeJIT(compiled)
    prepared = triton_launch.PreparedLaunch(kernel, (2,), {"A": 1, "B": 2}, 4, 2)
    x = torch.zeros(4)
    prepared((x, x, 7))
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: None)
    ran = []
    monkeypatch.setattr(triton_launch, "_run_compiled", lambda *args: ran.append(args) or True)
    prepared((x, x, 7))
    assert len(ran) == 1 and compiled.launcher.c_launch.calls == []


def test_a_refused_binary_launch_falls_back_to_compiled_run(fresh_launch_state, monkeypatch, caplog):
    class RefusingCLaunch(CLaunch):
        def __call__(self, *args):
            raise TypeError("function takes exactly 20 arguments")

    compiled = CompiledWithLauncher(FakeCudaLauncher(c_launch=RefusingCLaunch()))
    kernel = FakeJIT(compiled)
    prepared = triton_launch.PreparedLaunch(kernel, (2,), {"A": 1, "B": 2}, 4, 2)
    ran = []
    monkeypatch.setattr(triton_launch, "_run_compiled", lambda *args: ran.append(args) or True)
    x = torch.zeros(4)
    for _ in range(3):
        prepared((x, x, 7))
    assert prepared.binary is None and len(ran) == 2 and len(kernel.jit_calls) == 1
    assert "C launcher refused" in caplog.text


def test_launch_hooks_set():
    from triton.knobs import HookChain

    def runtime(enter, exit_):
        return types.SimpleNamespace(launch_enter_hook=enter, launch_exit_hook=exit_)

    assert not launch_hooks_set(runtime(None, None))
    assert launch_hooks_set(runtime(print, None)) and launch_hooks_set(runtime(None, print))
    chain = HookChain()
    assert not launch_hooks_set(runtime(chain, None))
    chain.add(print)
    assert launch_hooks_set(runtime(None, chain))


@pytest.mark.parametrize("positions, metadata", [((), None), ((1,), [{"swizzle": 64}]),
                                                 ((1, 3), [{"swizzle": 128}, {"swizzle": 32}])])
def test_the_binary_gets_what_triton_s_own_launch_passes(monkeypatch, positions, metadata):
    """The same C-call arguments as CompiledKernel.run's path (CudaLauncher.__call__ and the descriptor
    wrapper, as in triton 3.6) with no launch hook set."""
    from triton import knobs

    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", None)
    monkeypatch.setattr(knobs.runtime, "launch_exit_hook", None)
    compiled = CompiledWithLauncher(FakeCudaLauncher(positions, metadata))
    makers = {position: (lambda tensor, position=position: ("descriptor", position, tensor)) for position in positions}
    x, cache, rope = torch.zeros(4), torch.zeros(16), torch.zeros(8)
    args = (x, cache, 7, rope, 2.5, "constexpr")
    tensors = (0, 1, 3)
    binary = BinaryLaunch.for_compiled(compiled, (5, 2), makers, dict.fromkeys(tensors, 0))
    assert binary.pointers == tuple((p, 0) for p in tensors if p not in positions)
    binary(99, args)
    triton_launch._run_compiled(compiled, (5, 2), 99, jit_forms_of(args, makers))
    direct, through_triton = compiled.launcher.c_launch.calls
    assert len(direct) == len(through_triton) == BASE_ARGS + len(args) + 2 * len(positions)
    # the same arguments, a tensor's as its address (what Triton's launcher reads of it)
    assert all(a == b.data_ptr() if isinstance(b, torch.Tensor) else (a is b or a == b)
               for a, b in zip(direct, through_triton))
    assert sum(isinstance(b, torch.Tensor) for b in through_triton) == len(tensors) - len(positions)
    assert not any(isinstance(a, torch.Tensor) for a in direct)


def test_a_prepared_launch_passes_the_callers_tensor_to_the_binary_and_its_jit_form_to_the_jit(fresh_launch_state):
    compiled = CompiledWithLauncher(FakeCudaLauncher())
    kernel = FakeJIT(compiled)
    prepared = triton_launch.PreparedLaunch(kernel, (2,), {"A": 1, "B": 2}, 4, 2,
                                            jit_forms={1: lambda mask: mask.view(torch.uint8)})
    x, mask = torch.zeros(4), torch.ones(8, dtype=torch.bool)
    for _ in range(2):
        prepared((x, mask, 7))
    ((_, (jit_x, jit_mask, jit_int), *_),) = kernel.jit_calls
    assert jit_x is x and jit_mask.dtype == torch.uint8 and jit_int == 7
    (direct,) = compiled.launcher.c_launch.calls
    # the binary reads addresses: the caller's tensors', which its JIT forms share
    assert direct[BASE_ARGS:BASE_ARGS + 3] == (x.data_ptr(), mask.data_ptr(), 7) == (x.data_ptr(),
                                                                                      jit_mask.data_ptr(), 7)


def _key_range_launch(kernel):
    """A prepared launch taking two rows of a key range (as KeyBoundsPlan.jit_forms gives them): its first and last."""
    return triton_launch.PreparedLaunch(kernel, (2,), {"A": 1, "B": 2}, 4, 2,
                                        jit_forms={0: lambda r: r[0], 1: lambda r: r[2]})


def _ranges(batch=3):
    """Key ranges [3, batch] int32 of one layout (the key's strides and alignment) at different storage offsets."""
    first = torch.arange(3 * batch, dtype=torch.int32).view(3, batch)
    at_offset = torch.arange(3 * batch + 4, dtype=torch.int32)[4:].view(3, batch)  # 16 bytes in: same alignment
    return first, at_offset


def test_a_key_ranges_rows_reach_the_binary_as_its_address_plus_their_offsets(fresh_launch_state):
    compiled = CompiledWithLauncher(FakeCudaLauncher())
    prepared = _key_range_launch(FakeJIT(compiled))
    ranges = _ranges() + _ranges()
    for kv_range in ranges:
        prepared((kv_range, kv_range, 7))
    calls = compiled.launcher.c_launch.calls
    assert len(calls) == 3  # the first launch went through the JIT
    for call, kv_range in zip(calls, ranges[1:]):
        assert call[BASE_ARGS:BASE_ARGS + 3] == (kv_range[0].data_ptr(), kv_range[2].data_ptr(), 7)
        assert kv_range[2].data_ptr() - kv_range.data_ptr() == 2 * 3 * 4  # (an offset that is not zero)


def test_a_launch_that_leaves_the_binary_to_triton_gets_the_rows(fresh_launch_state, monkeypatch):
    from triton import knobs

    compiled = CompiledWithLauncher(FakeCudaLauncher())
    prepared = _key_range_launch(FakeJIT(compiled))
    first, second = _ranges()
    prepared((first, first, 7))
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: None)
    ran = []
    monkeypatch.setattr(triton_launch, "_run_compiled", lambda compiled, grid, stream, args: ran.append(args) or True)
    prepared((second, second, 7))
    (args,) = ran
    assert [args[0].data_ptr(), args[1].data_ptr()] == [second[0].data_ptr(), second[2].data_ptr()]
    assert args[0].tolist() == second[0].tolist() and args[1].tolist() == second[2].tolist() and args[2:] == (7, 1, 2)


def test_a_jit_form_that_is_not_a_view_keeps_the_launch_off_the_binary(fresh_launch_state, monkeypatch):
    compiled = CompiledWithLauncher(FakeCudaLauncher())
    prepared = triton_launch.PreparedLaunch(FakeJIT(compiled), (2,), {"A": 1, "B": 2}, 4, 2,
                                            jit_forms={1: lambda t: t.clone()})  # another address every call
    ran = []
    monkeypatch.setattr(triton_launch, "_run_compiled", lambda compiled, grid, stream, args: ran.append(args) or True)
    x, y = torch.zeros(4), torch.ones(4)
    for _ in range(2):
        prepared((x, y, 7))
    assert prepared.binary is None and compiled.launcher.c_launch.calls == [] and len(ran) == 1
    assert torch.equal(ran[0][1], y) and ran[0][1].data_ptr() != y.data_ptr()


def test_layout_known():
    assert layout_known(CompiledWithLauncher(FakeCudaLauncher()))
    assert not layout_known(FakeCompiled())  # its run is a method of a test module's class


def _pass_launches(compiled, jit_forms=None):
    """Two prepared launches of one kernel that take the same arguments and differ in a constexpr (a masked call's
    dense and sparse passes)."""
    kernel = FakeJIT(compiled)
    return kernel, [triton_launch.PreparedLaunch(kernel, (2,), {"A": dense, "B": 2}, 4, 2, jit_forms=jit_forms)
                    for dense in (1, 0)]


def test_a_launch_sequence_converts_the_arguments_once_and_calls_each_binary(fresh_launch_state, monkeypatch):
    compiled = CompiledWithLauncher(FakeCudaLauncher())
    kernel, launches = _pass_launches(compiled, jit_forms={1: lambda r: r[1]})
    sequence = triton_launch.LaunchSequence(launches)
    first, second = _ranges()
    x = torch.zeros(4)
    sequence((x, first, 7))  # first launches: the JIT's
    assert len(kernel.jit_calls) == 2 and sequence.binaries is not None
    converted = []
    real_converted = BinaryLaunch.converted
    monkeypatch.setattr(BinaryLaunch, "converted", lambda self, args: converted.append(args) or
                        real_converted(self, args))
    sequence((x, second, 7))
    assert len(converted) == 1 and len(kernel.jit_calls) == 2
    dense, sparse = compiled.launcher.c_launch.calls
    assert dense[:BASE_ARGS] == sparse[:BASE_ARGS]
    # the caller's tensors as addresses (the range's row at its offset), then each launch's constexprs in order
    assert dense[BASE_ARGS:] == (x.data_ptr(), second[1].data_ptr(), 7, 1, 2)
    assert sparse[BASE_ARGS:] == (x.data_ptr(), second[1].data_ptr(), 7, 0, 2)


def test_a_launch_sequence_whose_second_binary_refuses_goes_on_through_triton(fresh_launch_state, monkeypatch, caplog):
    class RefusingAfterOne(CLaunch):
        def __call__(self, *args):
            if self.calls:
                raise TypeError("function takes exactly 20 arguments")
            self.calls.append(args)

    compiled = CompiledWithLauncher(FakeCudaLauncher(c_launch=RefusingAfterOne()))
    kernel, launches = _pass_launches(compiled)
    sequence = triton_launch.LaunchSequence(launches)
    ran = []
    monkeypatch.setattr(triton_launch, "_run_compiled", lambda compiled, grid, stream, args: ran.append(args) or True)
    x = torch.zeros(4)
    sequence((x, x, 7))
    sequence((x, x, 7))  # the dense pass's binary launches, the sparse pass's refuses: Triton's launch runs it
    assert len(compiled.launcher.c_launch.calls) == 1 and [args[-2:] for args in ran] == [(0, 2)]
    assert launches[0].binary is not None and launches[1].binary is None and sequence.binaries is None
    assert "C launcher refused" in caplog.text
    sequence((x, x, 7))  # each alone from now on: the dense pass's binary refuses too, the sparse goes to Triton
    assert [args[-2:] for args in ran] == [(0, 2), (1, 2), (0, 2)] and sequence.binaries is None


def test_a_launch_sequence_leaves_its_launches_alone_while_hooks_are_set_or_with_descriptors(fresh_launch_state,
                                                                                          monkeypatch):
    from triton import knobs

    compiled = CompiledWithLauncher(FakeCudaLauncher())
    kernel, launches = _pass_launches(compiled)
    sequence = triton_launch.LaunchSequence(launches)
    x = torch.zeros(4)
    sequence((x, x, 7))
    monkeypatch.setattr(knobs.runtime, "launch_enter_hook", lambda metadata: None)
    ran = []
    monkeypatch.setattr(triton_launch, "_run_compiled", lambda compiled, grid, stream, args: ran.append(args) or True)
    sequence((x, x, 7))
    assert len(ran) == 2 and compiled.launcher.c_launch.calls == []

    with_descriptors = CompiledWithLauncher(FakeCudaLauncher((1,), [{"swizzle": 32}]))
    kernel = FakeJIT(with_descriptors)
    sequence = triton_launch.LaunchSequence(
        triton_launch.PreparedLaunch(kernel, (2,), {"A": dense, "B": 2}, 4, 2, descriptors={1: lambda t: t})
        for dense in (1, 0))
    sequence((x, x, 7))
    assert sequence.binaries is None  # (each launch encodes its own descriptors)


def _sequence_launched_once(compiled):
    kernel, launches = _pass_launches(compiled)
    sequence = triton_launch.LaunchSequence(launches)
    x = torch.zeros(4)
    sequence((x, x, 7))
    assert sequence.binaries is not None and len(kernel.jit_calls) == 2
    return kernel, sequence, x


def test_a_launch_sequence_on_another_device_goes_through_the_jit(fresh_launch_state, monkeypatch):
    from triton.runtime.driver import driver

    from launch_doubles import FakeDriver

    compiled = CompiledWithLauncher(FakeCudaLauncher())
    kernel, sequence, x = _sequence_launched_once(compiled)
    on_device_1 = type("OnDevice1", (FakeDriver,), {"get_current_device": lambda self: 1})()
    monkeypatch.setattr(type(driver), "active", property(lambda self: on_device_1))
    sequence((x, x, 7))  # the binaries are device 0's
    assert compiled.launcher.c_launch.calls == [] and [call[2]["A"] for call in kernel.jit_calls[2:]] == [1, 0]


def test_a_launch_sequence_with_direct_launches_off_goes_through_the_jit(fresh_launch_state, monkeypatch):
    compiled = CompiledWithLauncher(FakeCudaLauncher())
    kernel, sequence, x = _sequence_launched_once(compiled)
    monkeypatch.setattr(triton_launch, "_direct_launch_enabled", False)
    sequence((x, x, 7))
    assert compiled.launcher.c_launch.calls == [] and [call[2]["A"] for call in kernel.jit_calls[2:]] == [1, 0]


def test_a_launch_sequence_traced_into_a_graph_traces_each_launch(fresh_launch_state, monkeypatch):
    compiled = CompiledWithLauncher(FakeCudaLauncher())
    _, sequence, x = _sequence_launched_once(compiled)
    traced = []
    monkeypatch.setattr(triton_launch, "traced_launch", lambda kernel, grid, args, constexprs, *rest:
                        traced.append((args, constexprs)))
    with triton_launch.traced_launches():
        sequence((x, x, 7))
    assert compiled.launcher.c_launch.calls == []
    assert traced == [((x, x, 7), {"A": 1, "B": 2}), ((x, x, 7), {"A": 0, "B": 2})]


def test_launches_whose_tensors_differ_in_offset_do_not_share_a_conversion(fresh_launch_state):
    compiled = CompiledWithLauncher(FakeCudaLauncher())
    kernel = FakeJIT(compiled)
    sequence = triton_launch.LaunchSequence(
        triton_launch.PreparedLaunch(kernel, (2,), {"A": dense, "B": 2}, 4, 2, jit_forms={1: lambda r, row=row: r[row]})
        for dense, row in ((1, 0), (0, 2)))
    first, second = _ranges()
    x = torch.zeros(4)
    sequence((x, first, 7))
    assert sequence.binaries is None
    sequence((x, second, 7))  # each launch alone, each with its own row
    dense, sparse = compiled.launcher.c_launch.calls
    assert dense[BASE_ARGS:] == (x.data_ptr(), second[0].data_ptr(), 7, 1, 2)
    assert sparse[BASE_ARGS:] == (x.data_ptr(), second[2].data_ptr(), 7, 0, 2)


def test_a_slice_of_a_launch_sequence_is_one():
    launches = [object(), object()]
    sequence = triton_launch.LaunchSequence(launches)
    assert len(sequence) == 2 and list(sequence) == launches and sequence[1] is launches[1]
    assert isinstance(sequence[::-1], triton_launch.LaunchSequence) and list(sequence[::-1]) == launches[::-1]

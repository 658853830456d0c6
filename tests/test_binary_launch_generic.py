"""kernels/common/binary_launch.py against triton 3.7 to 3.9's own launcher code (the installed Triton's
CudaLauncher and descriptor wrapper, run for real on CPU): only the driver's C module is stood in for (its launch
function records its arguments, its descriptor encoder returns a token). A direct launch must hand the C function
what CompiledKernel.run's path hands it, a tensor as its address and None for the launch metadata and hooks (which
only a launch hook reads). No GPU machine lent here runs these Tritons (its image has 3.6): this and
test_binary_launch_driver_c.py (the same launches byte for byte through Triton's compiled driver.c) are the checks
of that layout; 3.6's is checked by test_binary_launch.py and the GPU tests. Skipped where the installed Triton is
not one of those versions (CI installs 3.9)."""
import types

import pytest
import torch

from glacompiler.kernels.common import triton_launch
from glacompiler.kernels.common.binary_launch import (GENERIC_LAUNCH_VERSIONS, BinaryLaunch, jit_forms_of,
                                                     launch_hooks_set, layout_known)

from launch_doubles import FakeCompiled

triton = pytest.importorskip("triton")
if ".".join(triton.__version__.split(".")[:2]) not in GENERIC_LAUNCH_VERSIONS:
    pytest.skip(f"triton {triton.__version__} does not launch through the generic launcher", allow_module_level=True)
nvidia_driver = pytest.importorskip("triton.backends.nvidia.driver")


class CLaunch:
    """Stands for utils.launch: callable, no Python code of its own."""

    def __init__(self):
        self.calls = []

    def __call__(self, *args):
        self.calls.append(args)


class KernelArg:
    """Stands for the C module's PyKernelArg (an argument's annotation)."""

    def __init__(self, nested_tuple, type):
        self.nested_tuple, self.type = nested_tuple, type

    def __eq__(self, other):
        return (self.nested_tuple, self.type) == (other.nested_tuple, other.type)


class FakeUtils:
    def __init__(self):
        self.launch = CLaunch()

    @staticmethod
    def build_signature_metadata(types_):
        return ",".join(types_).encode()

    @staticmethod
    def fill_tma_descriptor_tiled(address, swizzle, elem_size, elem_type, block_size, shape, strides, padding):
        return ("tensor map", address, swizzle, tuple(block_size), tuple(shape), tuple(strides))


class FakeActiveDriver:
    def __init__(self):
        self.utils = FakeUtils()

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 4321


@pytest.fixture
def driver(monkeypatch):
    from triton.runtime.driver import driver as driver_config

    active = FakeActiveDriver()
    monkeypatch.setattr(driver_config, "_active", active, raising=False)
    monkeypatch.setattr(type(driver_config), "active", property(lambda self: active), raising=False)
    monkeypatch.setattr(nvidia_driver, "PyKernelArg", KernelArg)
    for name, value in (("ARG_CONSTEXPR", 0), ("ARG_KERNEL", 1), ("ARG_TUPLE", 2)):
        monkeypatch.setattr(nvidia_driver, name, value)
    return active


def make_launcher(signature: dict, tensordesc_meta=None, scratch=0):
    """Triton's own CudaLauncher for a kernel of this signature (parameter name -> type)."""
    src = types.SimpleNamespace(signature=signature, constants={},
                                fn=types.SimpleNamespace(arg_names=list(signature)))
    metadata = types.SimpleNamespace(
        tensordesc_meta=tensordesc_meta, num_ctas=1, global_scratch_size=scratch, global_scratch_align=1,
        profile_scratch_size=0, profile_scratch_align=1, launch_cooperative_grid=False, launch_pdl=True,
        instrumentation_mode="")
    return nvidia_driver.CudaLauncher(src, metadata)


class Compiled(FakeCompiled):
    def __init__(self, launcher):
        super().__init__()
        self.launcher, self.packed_metadata = launcher, (4, 1, 2048)

    @property
    def run(self):
        return self.launcher

    def launch_metadata(self, grid, stream, *args):
        return LAUNCH_METADATA  # (Triton's: a LazyDict, read only by a launch hook)


LAUNCH_METADATA = object()


def assert_hooks_only_on_triton_s_path(direct: tuple, through_triton: tuple) -> None:
    """Triton's path hands the C function the launch metadata and knobs' hook chains (empty: the C code calls a hook
    that is not None, an empty chain calls nothing; PreparedLaunch leaves a launch with hooks set to Triton); the
    direct one None for all three."""
    from triton import knobs

    assert direct[8:11] == (None, None, None)
    assert through_triton[8] is LAUNCH_METADATA
    assert through_triton[9:11] == (knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook)
    assert not launch_hooks_set(knobs.runtime)


def descriptor_of(tensor):
    """What the op's descriptor makers hand the JIT: a host TMA descriptor of the tensor (rows of 8)."""
    return types.SimpleNamespace(base=tensor, shape=[tensor.numel() // 8, 8], strides=[8, 1], padding="zero",
                                 round_f32_to_tf32=False, block_shape=[4, 8])


SIGNATURE = {"X": "*fp32", "Y": "*fp32", "n": "i32", "s": "fp32", "B": "constexpr"}
DESCRIPTOR_SIGNATURE = {"X": "*fp32", "K": "tensordesc<fp32[4, 8]>", "n": "i32", "R": "tensordesc<fp32[4, 8]>",
                        "Y": "*fp32", "B": "constexpr"}
META = [{"swizzle": 128, "elem_size": 4, "elem_type": 7, "block_size": [4, 8], "fp4_padded": False}] * 2


def test_the_binary_gets_what_triton_s_own_launch_passes(driver):
    compiled = Compiled(make_launcher(SIGNATURE))
    assert compiled.launcher.launch is driver.utils.launch  # no descriptor: the C function itself
    x, y = torch.randn(4), torch.randn(8)
    args = (x, y, 7, 2.5, 16)
    binary = BinaryLaunch.for_compiled(compiled, (5, 2), {}, {0: 0, 1: 0})
    binary(99, args)
    triton_launch._run_compiled(compiled, (5, 2), 99, args)
    direct, through_triton = driver.utils.launch.calls
    assert direct[:8] == through_triton[:8] == (5, 2, 1, 99, "function", False, True, (4, 1, 2048))
    assert_hooks_only_on_triton_s_path(direct, through_triton)
    assert direct[11:13] == through_triton[11:13] == (None, None)  # no scratch
    assert direct[13] == through_triton[13] and direct[14] == through_triton[14] == b"*fp32,*fp32,i32,fp32"
    assert tuple(direct[15]) == (x.data_ptr(), y.data_ptr(), 7, 2.5, 16) and through_triton[15] == args


def test_descriptors_get_triton_s_encoding_once_per_address(driver):
    compiled = Compiled(make_launcher(DESCRIPTOR_SIGNATURE, META))
    assert compiled.launcher.launch is not driver.utils.launch  # Triton's descriptor wrapper
    made = []

    def maker(tensor):
        made.append(tensor.data_ptr())
        return descriptor_of(tensor)

    makers, jit_forms = {1: maker, 3: maker}, {1: descriptor_of, 3: descriptor_of}
    x, y = torch.randn(4), torch.randn(4)
    caches = [(torch.randn(64), torch.randn(32)) for _ in range(2)]
    binary = BinaryLaunch.for_compiled(compiled, (5, 2), makers, {0: 0, 4: 0})
    assert binary is not None and layout_known(compiled)
    for k, rope in caches + caches:
        binary(99, (x, k, 3, rope, y, 16))
        triton_launch._run_compiled(compiled, (5, 2), 99, jit_forms_of((x, k, 3, rope, y, 16), jit_forms))
    calls = driver.utils.launch.calls
    assert len(calls) == 8
    for direct, through_triton in zip(calls[::2], calls[1::2]):
        assert direct[:8] == through_triton[:8] and direct[11:15] == through_triton[11:15]
        assert_hooks_only_on_triton_s_path(direct, through_triton)
        ours, triton_s = list(direct[15]), list(through_triton[15])
        assert ours[0] == x.data_ptr() and triton_s[0] is x and ours[-2] == y.data_ptr() and triton_s[-2] is y
        assert ours[1:-2] == triton_s[1:-2] and ours[-1] == triton_s[-1] == 16
        assert len(ours) == len(direct[13])  # one argument per annotation: nothing read past the sequence
    first, second = caches
    assert made == [first[0].data_ptr(), first[1].data_ptr(), second[0].data_ptr(), second[1].data_ptr()]  # once
    assert calls[0][15][1] == ("tensor map", first[0].data_ptr(), 128, (4, 8), (8, 8), (8, 1))


def test_a_sequence_of_the_wrong_length_is_refused_before_the_c_function(driver):
    compiled = Compiled(make_launcher(SIGNATURE))
    binary = BinaryLaunch.for_compiled(compiled, (1,), {}, {0: 0, 1: 0})
    with pytest.raises(TypeError, match="reads 5"):
        binary(0, (torch.randn(4), torch.randn(4), 7, 2.5))
    assert driver.utils.launch.calls == []


@pytest.mark.parametrize("case", ["scratch", "version", "unencoded descriptor", "undeclared descriptor", "tuple",
                                  "another launch function"])
def test_launchers_it_leaves_to_triton(driver, monkeypatch, case):
    makers, layout = {}, True
    if case == "scratch":  # Triton allocates scratch memory per launch
        launcher = make_launcher(SIGNATURE, scratch=256)
    elif case == "tuple":  # the C code reads a nested tuple's entries unchecked
        launcher = make_launcher({"X": "*fp32", "pair": ("i32", "*fp32"), "B": "constexpr"})
    elif case == "another launch function":  # not the driver's (a profiler's wrapper, say)
        launcher = make_launcher(SIGNATURE)
        launcher.launch = CLaunch()
    elif case == "version":  # a later Triton may reorder the C call
        monkeypatch.setattr(triton, "__version__", "3.10.0")
        launcher, layout = make_launcher(SIGNATURE), False
    elif case == "unencoded descriptor":  # the memo would hold the tensor
        launcher, makers = make_launcher(DESCRIPTOR_SIGNATURE, None), {1: descriptor_of, 3: descriptor_of}
    else:
        launcher = make_launcher(DESCRIPTOR_SIGNATURE, META)
    compiled = Compiled(launcher)
    assert BinaryLaunch.for_compiled(compiled, (1,), makers) is None
    assert layout_known(compiled) == layout


def test_a_launch_sequence_hands_each_pass_what_triton_s_own_launch_passes(driver, monkeypatch):
    """A masked call's two passes (one kernel, a constexpr apart) through LaunchSequence: one conversion of the
    arguments, then each pass's C call with its own constexprs after the kernel's arguments, as Triton's path."""
    from glacompiler.memo import BoundedMemo

    from launch_doubles import FakeJIT

    monkeypatch.setattr(triton_launch, "_compiled", BoundedMemo(16))
    monkeypatch.setattr(triton_launch, "_constexpr_names", {})
    monkeypatch.setattr(triton_launch, "_direct_launch_enabled", True)
    compiled = Compiled(make_launcher({"X": "*fp32", "Y": "*fp32", "n": "i32", "A": "constexpr", "B": "constexpr"}))
    sequence = triton_launch.LaunchSequence(
        triton_launch.PreparedLaunch(FakeJIT(compiled), (5, 2), {"A": dense, "B": 2}, 4, 2) for dense in (1, 0))
    x, y = torch.randn(4), torch.randn(8)
    sequence((x, y, 7))  # the first launches: the JIT's
    assert sequence.binaries is not None and driver.utils.launch.calls == []
    sequence((x, y, 7))
    for dense in (1, 0):
        triton_launch._run_compiled(compiled, (5, 2), 4321, (x, y, 7, dense, 2))
    direct_dense, direct_sparse, triton_dense, triton_sparse = driver.utils.launch.calls
    for direct, through_triton in ((direct_dense, triton_dense), (direct_sparse, triton_sparse)):
        assert direct[:8] == through_triton[:8] and direct[11:15] == through_triton[11:15]
        assert_hooks_only_on_triton_s_path(direct, through_triton)
        assert len(direct[15]) == len(direct[13])  # one argument per annotation
        assert tuple(direct[15]) == tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a
                                          for a in through_triton[15])
    assert tuple(direct_dense[15][2:]) == (7, 1, 2) and tuple(direct_sparse[15][2:]) == (7, 0, 2)

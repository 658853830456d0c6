"""binary_launch.py's direct launches on triton 3.7 to 3.9, byte for byte through Triton's own C launch function:
the installed Triton's driver.c is compiled on this machine against a stand-in libcuda.so.1 that records what
reaches cuLaunchKernelEx (grid, block, shared memory, stream, function, launch attributes and every kernel
parameter's bytes; a TMA descriptor's bytes come from its cuTensorMapEncodeTiled). The same launch is then made
through CompiledKernel.run's path (Triton's CudaLauncher, its descriptor wrapper) and directly, and the records
must be equal; a changed scalar or pointer must show. No GPU machine lent to us runs these Tritons (its image has
3.6), so this is where their launch is checked. Runs in a subprocess: the stand-in must not be the process's
libcuda. Skipped without gcc, Python's headers or a Triton of those versions."""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig

import pytest

from glacompiler.kernels.common.binary_launch import GENERIC_LAUNCH_VERSIONS

triton = pytest.importorskip("triton")
if ".".join(triton.__version__.split(".")[:2]) not in GENERIC_LAUNCH_VERSIONS:
    pytest.skip(f"triton {triton.__version__} does not launch through the generic launcher", allow_module_level=True)
NVIDIA = pathlib.Path(triton.__file__).parent / "backends" / "nvidia"
PYTHON_INCLUDE = sysconfig.get_paths()["include"]
if shutil.which("gcc") is None or shutil.which("nm") is None \
        or not (pathlib.Path(PYTHON_INCLUDE) / "Python.h").exists():
    pytest.skip("needs gcc, nm and Python's headers", allow_module_level=True)

pytestmark = pytest.mark.slow  # two C builds and a subprocess: about 10 s

# The stand-in's functions that do something; every other cu* symbol driver.c references returns CUDA_SUCCESS.
RECORDER = r"""
#include "cuda.h"
#include <string.h>
static size_t sizes[512]; static int count = 0;
static unsigned char record[1 << 16]; static size_t length = 0; static int pointer_queries = 0;
void recorder_set_sizes(int n, const size_t *s) { count = n; memcpy(sizes, s, n * sizeof(size_t)); }
size_t recorder_take(unsigned char *out) { memcpy(out, record, length); return length; }
int recorder_pointer_queries(void) { return pointer_queries; }
static void put(const void *p, size_t n) { memcpy(record + length, p, n); length += n; }
CUresult cuCtxGetCurrent(CUcontext *context) { *context = (CUcontext)1; return CUDA_SUCCESS; }
CUresult cuGetErrorString(CUresult error, const char **text) { *text = "recorder"; return CUDA_SUCCESS; }
CUresult cuPointerGetAttribute(void *data, CUpointer_attribute attribute, CUdeviceptr address) {
  pointer_queries++; *(CUdeviceptr *)data = address; return CUDA_SUCCESS;
}
CUresult cuLaunchKernelEx(const CUlaunchConfig *c, CUfunction f, void **params, void **extra) {
  length = 0;
  put(&c->gridDimX, 4); put(&c->gridDimY, 4); put(&c->gridDimZ, 4);
  put(&c->blockDimX, 4); put(&c->blockDimY, 4); put(&c->blockDimZ, 4);
  put(&c->sharedMemBytes, 4); put(&c->hStream, 8); put(&f, 8); put(&c->numAttrs, 4);
  for (unsigned i = 0; i < c->numAttrs; i++) {
    put(&c->attrs[i].id, 4); put(&c->attrs[i].value, sizeof(c->attrs[i].value));
  }
  for (int i = 0; i < count; i++) put(params[i], sizes[i]);
  return CUDA_SUCCESS;
}
CUresult cuTensorMapEncodeTiled(CUtensorMap *map, CUtensorMapDataType type, cuuint32_t rank, void *address,
    const cuuint64_t *dims, const cuuint64_t *strides, const cuuint32_t *box, const cuuint32_t *element_strides,
    CUtensorMapInterleave interleave, CUtensorMapSwizzle swizzle, CUtensorMapL2promotion l2,
    CUtensorMapFloatOOBfill fill) {
  unsigned char *out = (unsigned char *)map; size_t at = 0;
  memset(out, 0, sizeof(*map));
#define WRITE(p, n) do { memcpy(out + at, p, n); at += n; } while (0)
  WRITE(&type, 4); WRITE(&rank, 4); WRITE(&address, 8); WRITE(dims, 8 * rank); WRITE(strides, 8 * (rank - 1));
  WRITE(box, 4 * rank); WRITE(element_strides, 4 * rank); WRITE(&interleave, 4); WRITE(&swizzle, 4); WRITE(&l2, 4);
  WRITE(&fill, 4);
  return CUDA_SUCCESS;
}
"""
RECORDED = {"cuCtxGetCurrent", "cuGetErrorString", "cuPointerGetAttribute", "cuLaunchKernelEx",
            "cuTensorMapEncodeTiled"}

# Run in the subprocess: Triton's path and the direct one through the compiled driver.c, for launches that cover
# every scalar type the kernels take, PDL, cooperative grids, clusters, a 1-D grid and TMA descriptors.
PROBE = r"""
import ctypes, importlib.util, json, sys, types
import torch, triton
from triton import knobs
from triton.runtime.driver import driver as driver_config
import triton.backends.nvidia.driver as nvidia_driver
from glacompiler.kernels.common.binary_launch import BinaryLaunch, jit_forms_of

build = sys.argv[1]
spec = importlib.util.spec_from_file_location("cuda_utils", build + "/cuda_utils" + sys.argv[2])
cuda_utils = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cuda_utils)
recorder = ctypes.CDLL(build + "/libcuda.so.1")


class Active:
    utils = cuda_utils

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 4321


active = Active()
driver_config._active = active
type(driver_config).active = property(lambda self: active)
for name in ("PyKernelArg", "ARG_CONSTEXPR", "ARG_KERNEL", "ARG_TUPLE"):
    setattr(nvidia_driver, name, getattr(cuda_utils, name))
# bytes of each signature-metadata code (driver.c's extractor table): pointers, ints, floats, the TMA map
SIZES = {1: 8, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 2, 8: 4, 9: 8, 10: 2, 11: 2, 12: 4, 13: 8, 14: 128}


class Compiled:
    def __init__(self, launcher, packed):
        self.run, self.function, self.packed_metadata = launcher, 0xABCDEF, packed


def launcher_for(signature, meta=None, pdl=False, cooperative=False, num_ctas=1):
    src = types.SimpleNamespace(signature=dict(signature), constants={},
                                fn=types.SimpleNamespace(arg_names=list(signature)))
    metadata = types.SimpleNamespace(
        tensordesc_meta=meta, num_ctas=num_ctas, global_scratch_size=0, global_scratch_align=1,
        profile_scratch_size=0, profile_scratch_align=1, launch_cooperative_grid=cooperative, launch_pdl=pdl,
        instrumentation_mode="")
    launcher = nvidia_driver.CudaLauncher(src, metadata)
    sizes = [SIZES[code] for code in launcher.kernel_signature] + [8, 8]  # (+ the two scratch pointers)
    recorder.recorder_set_sizes(len(sizes), (ctypes.c_size_t * len(sizes))(*sizes))
    return launcher


def take():
    buffer = (ctypes.c_ubyte * 65536)()
    return bytes(buffer[:recorder.recorder_take(buffer)])


def both_ways(launcher, args, grid, makers=None, jit_forms=None, repeats=2, num_ctas=1):
    packed = (4, num_ctas, 2048)
    compiled = Compiled(launcher, packed)
    pointers = {i: 0 for i, a in enumerate(args) if isinstance(a, torch.Tensor) and i not in (makers or {})}
    binary = BinaryLaunch.for_compiled(compiled, grid, makers or {}, pointers)
    assert binary is not None
    rows = []
    for _ in range(repeats):  # (a repeat takes the remembered descriptor encodings)
        queries = recorder.recorder_pointer_queries()
        launcher(*(tuple(grid) + (1, 1))[:3], 77, compiled.function, packed, {"launch": "metadata"},
                 knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *jit_forms_of(args, jit_forms or {}))
        through_triton, triton_queries = take(), recorder.recorder_pointer_queries() - queries
        queries = recorder.recorder_pointer_queries()
        binary(77, args)
        direct, direct_queries = take(), recorder.recorder_pointer_queries() - queries
        rows.append(dict(equal=direct == through_triton, bytes=len(direct), triton_queries=triton_queries,
                         direct_queries=direct_queries))
    return binary, rows


x, y, z = torch.randn(64), torch.zeros(32, dtype=torch.bfloat16), torch.zeros(16, dtype=torch.int8)
SCALARS = {"X": "*fp32", "Y": "*bf16", "n": "i32", "b": "i1", "s": "fp32", "h": "fp16", "u": "u64", "q": "i64",
           "Z": "*i8", "w": "bf16", "d": "fp64", "B": "constexpr", "C": "constexpr"}
ARGS = (x, y, 7, True, 2.5, 0.5, 2**40 + 3, -3, z, 1.25, 1e-300, 16, None)
results = {"triton": triton.__version__}
for name, options, grid, args in (
        ("scalars and pointers", {}, (5, 2), ARGS),
        ("ints where floats go", {}, (5, 2), (x, y, 7, 1, 2, 0, 5, -3, z, 1, 3, 16, None)),
        ("programmatic dependent launch", {"pdl": True}, (5, 2), ARGS),
        ("cooperative grid", {"cooperative": True}, (5, 2), ARGS),
        ("clusters of 2", {"num_ctas": 2}, (5, 2), ARGS),
        ("1-D grid", {}, (9,), ARGS)):
    results[name] = both_ways(launcher_for(SCALARS, **options), args, grid, num_ctas=options.get("num_ctas", 1))[1]

from triton.experimental.gluon import language as gl
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor


def descriptor_maker(width, rows, block, bits, padding="zero", tf32=False):
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=bits, rank=2)
    return (lambda tensor: TensorDescriptor(tensor, [rows, width], [width, 1], block, layout, padding, tf32)), layout


key_maker, key_layout = descriptor_maker(64, 32, [16, 64], 16)
rope_maker, rope_layout = descriptor_maker(32, 32, [8, 32], 32, "nan", True)
KEY = f"tensordesc<bf16[16,64],{key_layout!r}>"
DESCRIPTORS = {"K0": KEY, "X": "*fp32", "K": KEY, "n": "i32", "R": f"tensordesc<fp32[8,32],{rope_layout!r}>",
               "Y": "*fp32", "B": "constexpr"}
META = [{"swizzle": 3, "elem_size": 2, "elem_type": 6, "block_size": [16, 64], "fp4_padded": False}] * 2 + \
    [{"swizzle": 3, "elem_size": 4, "elem_type": 7, "block_size": [8, 32], "fp4_padded": False}]
makers = {0: key_maker, 2: key_maker, 4: rope_maker}
caches = [torch.zeros(32 * 64, dtype=torch.bfloat16) for _ in range(2)]
rope = torch.zeros(32 * 32)
launcher = launcher_for(DESCRIPTORS, META)
binary, rows = both_ways(launcher, (caches[0], x, caches[1], 3, rope, x, 16), (3,), makers, makers)
for cache in (caches[1], caches[0], caches[1]):  # caches alternating through one BinaryLaunch
    launcher(3, 1, 1, 77, 0xABCDEF, (4, 1, 2048), None, None, None,
             *jit_forms_of((cache, x, caches[1], 3, rope, x, 16), makers))
    through_triton = take()
    binary(77, (cache, x, caches[1], 3, rope, x, 16))
    rows.append(dict(equal=take() == through_triton))
results["TMA descriptors"] = rows

launcher = launcher_for(SCALARS)
binary = both_ways(launcher, ARGS, (5, 2), repeats=1)[0]
launcher(5, 2, 1, 77, 0xABCDEF, (4, 1, 2048), None, None, None, *ARGS)
reference = take()
controls = []
for changed in ((x, y, 8, *ARGS[3:]), (x, x, *ARGS[2:]), ARGS):  # another scalar, another pointer, the same
    binary(77, changed)
    controls.append(take() == reference)
results["controls"] = controls
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def driver_build(tmp_path_factory) -> pathlib.Path:
    """The installed Triton's driver.c as a Python extension, linked to the recording libcuda.so.1."""
    build = tmp_path_factory.mktemp("driver_c")
    include = ["-I", str(NVIDIA / "include"), "-I", PYTHON_INCLUDE]
    subprocess.run(["gcc", "-c", "-fPIC", "-O1", *include, str(NVIDIA / "driver.c"), "-o", str(build / "driver.o")],
                   check=True, capture_output=True)
    undefined = subprocess.run(["nm", "-u", str(build / "driver.o")], check=True, capture_output=True, text=True)
    others = sorted({line.split()[-1] for line in undefined.stdout.splitlines()
                     if line.split()[-1].startswith("cu")} - RECORDED)
    (build / "recorder.c").write_text(RECORDER)
    # (apart from cuda.h, whose prototypes these do not follow: their callers only read the status)
    (build / "succeed.c").write_text("".join(f"int {name}(void) {{ return 0; }}\n" for name in others))
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", *include, str(build / "recorder.c"), str(build / "succeed.c"),
                    "-o", str(build / "libcuda.so.1")], check=True, capture_output=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    subprocess.run(["gcc", "-shared", "-fPIC", str(build / "driver.o"), "-o", str(build / f"cuda_utils{suffix}"),
                    "-L", str(build), "-l:libcuda.so.1", f"-Wl,-rpath,{build}", "-ldl"],
                   check=True, capture_output=True)
    return build


def test_direct_launches_hand_cuda_what_triton_s_launcher_does(driver_build):
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    environment["LD_LIBRARY_PATH"] = str(driver_build)  # (where dlopen("libcuda.so.1") finds the recorder)
    result = subprocess.run([sys.executable, "-c", PROBE, str(driver_build), sysconfig.get_config_var("EXT_SUFFIX")],
                            capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    assert results.pop("triton") == triton.__version__  # (the Triton whose driver.c was built)
    assert results.pop("controls") == [False, False, True]
    descriptors = results.pop("TMA descriptors")
    assert len(descriptors) == 5 and all(row["equal"] for row in descriptors), descriptors
    for name, rows in results.items():
        assert all(row["equal"] for row in rows), (name, rows)
        # (Triton asks the driver about each tensor address; the direct launch passes addresses it has settled)
        assert all(row["triton_queries"] == 3 and row["direct_queries"] == 0 for row in rows), (name, rows)

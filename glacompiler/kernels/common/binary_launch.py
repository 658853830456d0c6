"""Call a compiled Triton binary's C launcher with no Python layer of Triton's in between.

A launch through CompiledKernel.run passes CudaLauncher.__call__ (scratch allocation closures) and, for a
kernel with TMA descriptor arguments, a Python wrapper that walks every argument and encodes each descriptor
again (cuTensorMapEncodeTiled) on every launch. On an H200 host (triton 3.6) that is 22 us for the Hopper latent
kernel's launch against 10 us for its C launcher alone. A decode step launches the same binary with the same
cache tensors every step, so here:

- the C launcher is called directly, for the launcher layout this module knows (triton 3.6's: its argument
  format string, KNOWN_BASE_ARGS_FORMAT below, and the descriptor wrapper's closure), with no scratch memory and
  no launch hooks (another Triton takes Triton's own path: BinaryLaunch.for_compiled returns None; so does a
  launch while a profiler's hooks are set: PreparedLaunch checks them every call);
- a tensor argument is passed as its address (an int), plus a fixed offset where the kernel takes a view of
  the caller's tensor (a key range's rows): the launcher then neither calls data_ptr() nor asks the driver
  whether that address is device memory (cuPointerGetAttribute, once per tensor argument and launch), which the
  op's validation and the prepared call's key (every tensor's device) have settled;
- a descriptor argument is passed as the tensor it views, and its encoding is remembered per (argument,
  tensor address): the launch plan fixes everything else a descriptor encodes (shape, strides, block shape,
  layout, dtype), so an address seen before has the same encoding, even for a new tensor at a freed one's
  address. Only encoded descriptors (Triton's tensordesc metadata present) take this path: an unencoded one
  would hold the tensor itself in the memo.
"""
from __future__ import annotations

import inspect
import sys
from typing import Callable, NamedTuple, Optional

from ...memo import BoundedMemo

# triton 3.6's launcher arguments before the kernel's: grid x, y, z, stream, function, cooperative grid, PDL,
# global scratch, profile scratch, packed metadata, launch metadata, enter hook, exit hook.
KNOWN_BASE_ARGS_FORMAT = "iiiKKppOOOOOO"
# The descriptor wrapper's closure variables (triton 3.6's wrap_handle_tensordesc.inner).
_WRAPPER_CELLS = ("launcher", "tensordesc_indices", "tensordesc_meta")


def _driver_of_known_layout(launcher):
    """The driver module that made `launcher`, where its launcher layout is the known one; else None."""
    module = sys.modules.get(type(launcher).__module__)
    return module if getattr(module, "_BASE_ARGS_FORMAT", None) == KNOWN_BASE_ARGS_FORMAT else None


def _c_launcher_and_descriptors(launcher) -> Optional[tuple]:
    """(C launch function, {argument position: (Triton's descriptor metadata, its encoder)}) of a CudaLauncher
    with the known layout whose descriptors Triton encodes, else None."""
    module = _driver_of_known_layout(launcher)
    if module is None:
        return None
    if getattr(launcher, "global_scratch_size", 1) or getattr(launcher, "profile_scratch_size", 1):
        return None  # Triton allocates scratch memory per launch for these: its path
    launch = getattr(launcher, "launch", None)
    if not callable(launch):
        return None
    code = getattr(launch, "__code__", None)
    if code is None:  # not Python code: the C function itself (a kernel with no descriptor argument)
        return launch, {}
    closure = getattr(launch, "__closure__", None)
    if closure is None or not set(_WRAPPER_CELLS) <= set(code.co_freevars):
        return None
    cells = {name: cell.cell_contents for name, cell in zip(code.co_freevars, closure)}
    c_launch, positions, metadata = (cells[name] for name in _WRAPPER_CELLS)
    encode = getattr(module, "make_tensordesc_arg", None)
    if not callable(c_launch) or hasattr(c_launch, "__code__") or encode is None:
        return None
    if len(inspect.signature(encode).parameters) != 2:
        return None
    positions = sorted(positions)
    if not metadata or len(metadata) != len(positions) or any(entry is None for entry in metadata):
        return None  # descriptors passed as base tensor, shape and strides: the memo would hold the tensor
    return c_launch, {position: (metadata[i], encode) for i, position in enumerate(positions)}


def layout_known(compiled) -> bool:
    """Whether `compiled`'s launcher has the layout this module calls directly (what the GPU tests expect)."""
    try:
        return _driver_of_known_layout(compiled.run) is not None
    except Exception:  # noqa: BLE001 - a launcher that cannot be loaded is not one we call
        return False


class _Descriptor(NamedTuple):
    position: int
    make: Callable  # the call's tensor -> its TMA descriptor
    metadata: dict  # Triton's tensordesc metadata of the binary (swizzle, element type, block size)
    encode: Callable  # Triton's make_tensordesc_arg: descriptor, metadata -> the launcher's arguments


class BinaryLaunch:
    """A compiled kernel's C launcher for one grid, called with the kernel's arguments (constexprs included, as
    CompiledKernel.run takes them). `descriptors` maps an argument position to the function that makes its
    TMA descriptor from the tensor passed there; the binary must take a descriptor at each such position and
    nowhere else, and each function may read of the tensor only its address (everything else comes from the
    launch plan): the encodings are remembered by address."""

    __slots__ = ("c_launch", "grid", "function", "packed_metadata", "cooperative", "pdl", "descriptors", "encodings",
                 "pointers")

    def __init__(self, c_launch, compiled, grid: tuple, triton_descriptors: dict, descriptors: dict,
                 pointers: Optional[dict] = None):
        self.c_launch = c_launch
        # (position, byte offset) of each argument passed as an address
        self.pointers = tuple((p, offset) for p, offset in sorted((pointers or {}).items()) if p not in descriptors)
        self.grid = (*grid, 1, 1)[:3]
        self.function, self.packed_metadata = compiled.function, compiled.packed_metadata
        launcher = compiled.run
        self.cooperative, self.pdl = launcher.launch_cooperative_grid, launcher.launch_pdl
        self.descriptors = tuple(_Descriptor(position, descriptors[position], *triton_descriptors[position])
                                 for position in sorted(triton_descriptors))
        # (position, tensor address) -> the descriptor's launcher arguments (encoding, shape, strides)
        self.encodings = BoundedMemo(1024)

    @classmethod
    def for_compiled(cls, compiled, grid: tuple, descriptors: dict,
                     pointers: Optional[dict] = None) -> Optional["BinaryLaunch"]:
        """The direct launcher of `compiled`, or None where its launcher's layout is not the known one or its
        descriptor positions are not `descriptors`' (then CompiledKernel.run launches it). pointers: {position:
        byte offset} of the arguments that are always tensors, passed to the launcher as their address plus the
        offset."""
        try:
            found = _c_launcher_and_descriptors(compiled.run)
        except Exception:  # noqa: BLE001 - any surprise in another Triton's internals means: not this path
            return None
        if found is None or set(found[1]) != set(descriptors):
            return None
        return cls(found[0], compiled, grid, found[1], descriptors, pointers)

    def __call__(self, stream: int, args) -> None:
        if self.pointers:
            args = list(args)
            for position, offset in self.pointers:
                args[position] = args[position].data_ptr() + offset
        if self.descriptors:
            args = self._with_encoded_descriptors(args)
        self.c_launch(*self.grid, stream, self.function, self.cooperative, self.pdl, None, None, self.packed_metadata,
                      None, None, None, *args)

    def _with_encoded_descriptors(self, args: tuple) -> list:
        expanded, start = [], 0
        for descriptor in self.descriptors:
            position = descriptor.position
            expanded.extend(args[start:position])
            tensor = args[position]
            key = (position, tensor.data_ptr())
            encoding = self.encodings.get(key)
            if encoding is None:
                encoding = tuple(descriptor.encode(descriptor.make(tensor), descriptor.metadata))
                self.encodings.remember(key, encoding)
            expanded.extend(encoding)
            start = position + 1
        expanded.extend(args[start:])
        return expanded


def launch_hooks_set(runtime) -> bool:
    """Whether a launch hook (a profiler's) is installed in triton.knobs.runtime: None or an empty HookChain
    (triton 3.6 and later hold their hooks in HookChains) means none."""
    return any(hook is not None and getattr(hook, "calls", True)
               for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook))


def jit_forms_of(args: tuple, forms: dict[int, Callable]) -> tuple:
    """args with the value at each of `forms`' positions replaced by its JIT form (a TMA descriptor of the
    tensor, a mask's kernel operand)."""
    if not forms:
        return args
    return tuple(forms[i](arg) if i in forms else arg for i, arg in enumerate(args))

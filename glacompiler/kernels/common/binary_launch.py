"""Call a compiled Triton binary's C launcher with no Python layer of Triton's in between.

A launch through CompiledKernel.run passes CudaLauncher.__call__ (scratch allocation closures) and, for a
kernel with TMA descriptor arguments, a Python wrapper that walks every argument and encodes each descriptor
again (cuTensorMapEncodeTiled) on every launch. On an H200 host (triton 3.6) that is 22 us for the Hopper latent
kernel's launch against 10 us for its C launcher alone. A decode step launches the same binary with the same
cache tensors every step, so here:

- the C launcher is called directly, for the two launcher layouts this module knows, with no scratch memory and
  no launch hooks (another layout takes Triton's own path: BinaryLaunch.for_compiled returns None; so does a
  launch while a profiler's hooks are set: PreparedLaunch checks them every call):
  - triton 3.6's: a C extension per kernel signature, called with the kernel's arguments spread (its argument
    format string, KNOWN_BASE_ARGS_FORMAT below);
  - triton 3.7 to 3.9's (torch 2.12 to 2.14 pin these): one C function for every kernel (the driver's
    utils.launch), called with the launcher's argument annotations and signature bytes and the kernel's
    arguments as one sequence. Its C code reads as many arguments as the annotations name without checking the
    sequence's length, so BinaryLaunch checks it. Only these versions: a later one may reorder the call;
- a tensor argument is passed as its address (an int), plus a fixed offset where the kernel takes a view of
  the caller's tensor (a key range's rows): the launcher then neither calls data_ptr() nor asks the driver
  whether that address is device memory (cuPointerGetAttribute, once per tensor argument and launch), which the
  op's validation and the prepared call's key (every tensor's device) have settled;
- a descriptor argument is passed as the tensor it views, and its encoding is remembered per (argument,
  tensor address): the launch plan fixes everything else a descriptor encodes (shape, strides, block shape,
  layout, dtype), so an address seen before has the same encoding, even for a new tensor at a freed one's
  address. Only encoded descriptors (Triton's tensordesc metadata present) take this path: an unencoded one
  would hold the tensor itself in the memo. The encoder and the descriptors' positions are read from Triton's
  descriptor wrapper (its closure), at the top level of the signature only (our kernels take no tuples).
"""
from __future__ import annotations

import inspect
import sys
from typing import Callable, NamedTuple, Optional

from ...memo import BoundedMemo

# triton 3.6's launcher arguments before the kernel's: grid x, y, z, stream, function, cooperative grid, PDL,
# global scratch, profile scratch, packed metadata, launch metadata, enter hook, exit hook.
KNOWN_BASE_ARGS_FORMAT = "iiiKKppOOOOOO"
# Tritons whose NVIDIA driver launches every kernel through utils.launch, with the arguments grid x, y, z, stream,
# function, cooperative grid, PDL, packed metadata, launch metadata, enter hook, exit hook, global scratch, profile
# scratch, argument annotations, signature bytes, the kernel's arguments ("iiiKKpp(iii)OOOOOOy*O" in their driver.c).
GENERIC_LAUNCH_VERSIONS = ("3.7", "3.8", "3.9")
NVIDIA_DRIVER_MODULE = "triton.backends.nvidia.driver"
# The descriptor wrapper's closure variables: triton 3.6 and 3.7's wrap_handle_tensordesc.inner (its encoder the
# driver module's make_tensordesc_arg) and 3.8 and 3.9's wrap_handle_tensordesc_impl.inner (its encoder a closure
# variable taking a third argument, which NVIDIA's ignores: named "_").
_WRAPPER_CELLS = ("launcher", "tensordesc_indices", "tensordesc_meta")
_PATHS_WRAPPER_CELLS = ("launcher", "relevant_paths", "tensordesc_meta", "make_tensordesc_arg")


class _LauncherParts(NamedTuple):
    c_launch: Callable
    descriptors: dict  # argument position -> (Triton's descriptor metadata, encoder: descriptor, metadata -> arguments)
    generic: Optional[tuple]  # (argument annotations, signature bytes) of the generic layout; None for 3.6's


def _triton_minor_version() -> str:
    import triton

    return ".".join(getattr(triton, "__version__", "").split(".")[:2])


def _driver_of_known_layout(launcher):
    """(the driver module that made `launcher`, whether its layout is the generic one) where its layout is one
    this module knows; else None."""
    module = sys.modules.get(type(launcher).__module__)
    if module is None:
        return None
    if getattr(module, "_BASE_ARGS_FORMAT", None) == KNOWN_BASE_ARGS_FORMAT:
        return module, False
    if module.__name__ == NVIDIA_DRIVER_MODULE and not hasattr(module, "_BASE_ARGS_FORMAT") \
            and _triton_minor_version() in GENERIC_LAUNCH_VERSIONS \
            and type(launcher) is getattr(module, "CudaLauncher", None) \
            and hasattr(launcher, "arg_annotations") and hasattr(launcher, "kernel_signature"):
        return module, True
    return None


def _generic_parts_known(launcher, c_launch) -> bool:
    """Whether a generic launcher's C function is the active driver's launch and its arguments hold no tuple (the
    C code checks the length of neither the top-level sequence nor a nested one; BinaryLaunch checks the first)."""
    from triton.runtime.driver import driver

    if c_launch is not driver.active.utils.launch:
        return False
    return all(getattr(annotation, "nested_tuple", None) is None for annotation in launcher.arg_annotations)


def _wrapper_descriptors(module, wrapper) -> Optional[tuple]:
    """(the C launch function, {argument position: (Triton's descriptor metadata, encoder of two arguments)}) that
    a descriptor wrapper holds in its closure, or None where the wrapper is not one this module knows or a
    descriptor is not encoded by Triton."""
    closure = getattr(wrapper, "__closure__", None)
    if closure is None:
        return None
    cells = {name: cell.cell_contents for name, cell in zip(wrapper.__code__.co_freevars, closure)}
    if set(_WRAPPER_CELLS) <= set(cells):
        c_launch, positions, metadata = (cells[name] for name in _WRAPPER_CELLS)
        encode = getattr(module, "make_tensordesc_arg", None)
        if encode is None or len(inspect.signature(encode).parameters) != 2:
            return None
    elif set(_PATHS_WRAPPER_CELLS) <= set(cells):
        c_launch, positions, metadata, encode_with_base = (cells[name] for name in _PATHS_WRAPPER_CELLS)
        if not isinstance(positions, dict) or any(inner != {} for inner in positions.values()):
            return None  # a descriptor inside a tuple argument: not a position of ours
        parameters = list(inspect.signature(encode_with_base).parameters)
        if len(parameters) != 3 or parameters[2] != "_":
            return None

        def encode(descriptor, descriptor_metadata):
            return encode_with_base(descriptor, descriptor_metadata, None)
    else:
        return None
    if not callable(c_launch) or hasattr(c_launch, "__code__"):
        return None
    positions = sorted(positions)
    if not metadata or len(metadata) != len(positions) or any(entry is None for entry in metadata):
        return None  # descriptors passed as base tensor, shape and strides: the memo would hold the tensor
    return c_launch, {position: (metadata[i], encode) for i, position in enumerate(positions)}


def _launcher_parts(launcher) -> Optional[_LauncherParts]:
    """The C launch function, the descriptors Triton encodes and the generic layout's extra arguments of a
    CudaLauncher with a known layout; None where it is not one, or Triton must make scratch memory per launch, or
    a descriptor is not encoded by Triton."""
    known = _driver_of_known_layout(launcher)
    if known is None:
        return None
    module, generic_layout = known
    if getattr(launcher, "global_scratch_size", 1) or getattr(launcher, "profile_scratch_size", 1):
        return None  # Triton allocates scratch memory per launch for these: its path
    if getattr(launcher, "gsan_enabled", False):
        return None  # the sanitizer's extra arguments: Triton's path
    generic = (launcher.arg_annotations, launcher.kernel_signature) if generic_layout else None
    launch = getattr(launcher, "launch", None)
    if not callable(launch):
        return None
    if getattr(launch, "__code__", None) is None:  # not Python code: the C function itself (no descriptor argument)
        c_launch, descriptors = launch, {}
    else:
        found = _wrapper_descriptors(module, launch)
        if found is None:
            return None
        c_launch, descriptors = found
    if generic is not None and not _generic_parts_known(launcher, c_launch):
        return None
    return _LauncherParts(c_launch, descriptors, generic)


def layout_known(compiled) -> bool:
    """Whether `compiled`'s launcher has a layout this module calls directly (what the GPU tests expect)."""
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
                 "pointers", "generic", "argument_count", "compiled")

    def __init__(self, parts: _LauncherParts, compiled, grid: tuple, descriptors: dict,
                 pointers: Optional[dict] = None):
        self.c_launch = parts.c_launch
        self.compiled = compiled  # (holds the module the function handle lives in: 3.8 on unload it at __del__)
        # (position, byte offset) of each argument passed as an address
        self.pointers = tuple((p, offset) for p, offset in sorted((pointers or {}).items()) if p not in descriptors)
        self.grid = (*grid, 1, 1)[:3]
        self.function, self.packed_metadata = compiled.function, compiled.packed_metadata
        launcher = compiled.run
        self.cooperative, self.pdl = launcher.launch_cooperative_grid, launcher.launch_pdl
        self.descriptors = tuple(_Descriptor(position, descriptors[position], *parts.descriptors[position])
                                 for position in sorted(parts.descriptors))
        # (position, tensor address) -> the descriptor's launcher arguments (encoding, shape, strides)
        self.encodings = BoundedMemo(1024)
        # the generic layout's (annotations, signature bytes) and how many arguments they read; None: 3.6's stubs
        self.generic = parts.generic
        self.argument_count = None if parts.generic is None else len(parts.generic[0])

    @classmethod
    def for_compiled(cls, compiled, grid: tuple, descriptors: dict,
                     pointers: Optional[dict] = None) -> Optional["BinaryLaunch"]:
        """The direct launcher of `compiled`, or None where its launcher's layout is not a known one or its
        descriptor positions are not `descriptors`' (then CompiledKernel.run launches it). pointers: {position:
        byte offset} of the arguments that are always tensors, passed to the launcher as their address plus the
        offset."""
        try:
            parts = _launcher_parts(compiled.run)
        except Exception:  # noqa: BLE001 - any surprise in another Triton's internals means: not this path
            return None
        if parts is None or set(parts.descriptors) != set(descriptors):
            return None
        return cls(parts, compiled, grid, descriptors, pointers)

    def __call__(self, stream: int, args) -> None:
        self.launch_converted(stream, self.converted(args))

    def converted(self, args):
        """The kernel's arguments as the C launcher takes them: each tensor as its address plus its offset, and
        each TMA descriptor's tensor as the descriptor's encoding."""
        if self.pointers:
            args = list(args)
            for position, offset in self.pointers:
                args[position] = args[position].data_ptr() + offset
        if self.descriptors:
            args = self._with_encoded_descriptors(args)
        return args

    def launch_converted(self, stream: int, args, constexpr_values: tuple = ()) -> None:
        """The C launcher, given converted(...)'s arguments followed by constexpr_values (the constexprs, where the
        arguments converted did not hold them already)."""
        if self.generic is None:
            self.c_launch(*self.grid, stream, self.function, self.cooperative, self.pdl, None, None,
                          self.packed_metadata, None, None, None, *args, *constexpr_values)
            return
        if constexpr_values:
            args = (*args, *constexpr_values)
        if len(args) != self.argument_count:  # (a TypeError sends the caller to CompiledKernel.run)
            raise TypeError(f"{len(args)} arguments for a launcher that reads {self.argument_count}")
        annotations, signature = self.generic
        self.c_launch(*self.grid, stream, self.function, self.cooperative, self.pdl, self.packed_metadata, None, None,
                      None, None, None, annotations, signature, args)

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
    (triton 3.6 and later hold their hooks in HookChains) means none. (Spelled out: every launch asks.)"""
    enter, exit_ = runtime.launch_enter_hook, runtime.launch_exit_hook
    return ((enter is not None and bool(getattr(enter, "calls", True)))
            or (exit_ is not None and bool(getattr(exit_, "calls", True))))


def jit_forms_of(args: tuple, forms: dict[int, Callable]) -> tuple:
    """args with the value at each of `forms`' positions replaced by its JIT form (a TMA descriptor of the
    tensor, a mask's kernel operand)."""
    if not forms:
        return args
    return tuple(forms[i](arg) if i in forms else arg for i, arg in enumerate(args))

"""Launch Triton kernels with little host time.

A decode step calls the op once per layer, and Triton's JIT launch path binds and specialises every argument
again on each call (the attention kernel has about 45), builds a cache key string and checks the kernel's
globals. Here the first launch of each specialisation goes through the JIT, which compiles or finds
the binary; later launches with the same specialisation call that binary's launcher directly, as Inductor's
generated code does. The key holds everything the JIT specialises on, so the binary it finds is the one the
JIT would pick: each int argument by value (a call site passes the same strides every step), except those the
kernel declares do_not_specialize (a growing cache's capacity), by their width alone, each tensor by
dtype and 16-byte alignment, each TMA tensor descriptor by dtype, block shape and shared-memory layout (what
the JIT specialises a descriptor on; its base, shape and strides are encoded at every launch), the
constexprs, warps and stages, and the device.

While a launch plan is traced into a compiled graph (traced_launches), launches do not run: each becomes a
user-defined Triton kernel call in the graph (torch.library.wrap_triton), which Inductor compiles and launches
from its own wrapper, with no Python on the way.
"""
from __future__ import annotations

import logging
from typing import Optional

from torch import Tensor

from ...context_flag import ContextFlag
from ...memo import BoundedMemo
from .binary_launch import BinaryLaunch, jit_forms_of, launch_hooks_set

LOGGER = logging.getLogger("glacompiler")

# specialisation key -> CompiledKernel (a cache whose strides follow a growing length adds a key per call)
_compiled = BoundedMemo(4096)
# JITFunction -> names of its constexpr parameters, in signature order (they follow the runtime ones)
_constexpr_names: dict = {}
# JITFunction -> positions of its do_not_specialize parameters
_unspecialised: dict = {}
# Turned off for the process if a direct launch is ever refused (a Triton whose launcher API differs).
_direct_launch_enabled = True
# On while a launch plan is traced into a graph: launches made inside `with traced_launches():` become graph
# nodes (wrap_triton) instead of running.
_TRACING = ContextFlag("glacompiler_tracing_launches")
traced_launches = _TRACING.raised
tracing_launches = _TRACING.is_set
# (triton.knobs.runtime, triton's driver config), imported at the first direct launch (the interpreter must be chosen
# before triton loads) and held: an import statement on every launch costs more host time than the launch's checks.
_TRITON_RUNTIME = None


def _triton_runtime() -> tuple:
    """(triton.knobs.runtime, triton.runtime.driver.driver)."""
    global _TRITON_RUNTIME
    if _TRITON_RUNTIME is None:
        from triton import knobs
        from triton.runtime.driver import driver

        _TRITON_RUNTIME = knobs.runtime, driver
    return _TRITON_RUNTIME


def traced_launch(kernel, grid: tuple, args: tuple, constexprs: dict, num_warps: int, num_stages: int) -> None:
    """The launch as a traced user-defined Triton kernel call (its tensors written in place, as by the kernel)."""
    from torch.library import wrap_triton

    wrap_triton(kernel)[tuple(grid)](*args, **constexprs, num_warps=num_warps, num_stages=num_stages)


def _is_tensor_descriptor(value) -> bool:
    """A host-side TMA descriptor (triton's or Gluon's TensorDescriptor)."""
    return hasattr(value, "block_shape") and hasattr(value, "layout") and hasattr(value, "base")


def _unspecialised_positions(kernel) -> tuple:
    """Positions of the parameters declared do_not_specialize: the JIT does not specialise on their values."""
    positions = _unspecialised.get(kernel)
    if positions is None:
        positions = tuple(i for i, param in enumerate(getattr(kernel, "params", ()))
                          if getattr(param, "do_not_specialize", False))
        _unspecialised[kernel] = positions
    return positions


def specialisation_key(kernel, device_index: int, args: tuple, constexprs: dict, num_warps: int,
                       num_stages: int, options: Optional[dict] = None) -> tuple:
    parts = [kernel, device_index, num_warps, num_stages, *sorted((options or {}).items())]
    unspecialised = _unspecialised_positions(kernel)
    if unspecialised:  # only the width (int32 or int64) of such an int reaches the binary
        args = list(args)
        for position in unspecialised:
            if position < len(args) and isinstance(args[position], int):
                args[position] = ("int", -2**31 <= args[position] < 2**31)
    for value in args:
        if isinstance(value, Tensor):
            parts.append(value.dtype)
            parts.append(value.data_ptr() % 16 == 0)
        elif _is_tensor_descriptor(value):
            parts.append(("tensordesc", value.base.dtype, tuple(value.block_shape), repr(value.layout)))
        else:
            parts.append(value)
    parts.extend(constexprs.items())
    return tuple(parts)


def _ordered_constexprs(kernel, args: tuple, constexprs: dict) -> list:
    names = _constexpr_names.get(kernel)
    if names is None:
        names = kernel.arg_names[len(args):]
        if sorted(names) != sorted(constexprs):
            raise ValueError(f"{kernel}: constexprs {sorted(constexprs)} do not match the parameters {names}")
        _constexpr_names[kernel] = names
    return [constexprs[name] for name in names]


def _run_compiled(compiled, grid: tuple, stream, all_args: tuple) -> bool:
    """What JITFunction.run does once it has found the binary, launch hooks (profilers) included. False (and
    direct launches off for the process) where this Triton's launcher takes other arguments."""
    global _direct_launch_enabled
    runtime, _ = _triton_runtime()
    try:
        compiled.run(*(tuple(grid) + (1, 1))[:3], stream, compiled.function, compiled.packed_metadata,
                     compiled.launch_metadata(grid, stream, *all_args), runtime.launch_enter_hook,
                     runtime.launch_exit_hook, *all_args)
        return True
    except TypeError as error:
        _direct_launch_enabled = False
        LOGGER.warning("direct kernel launches turned off (%s); every launch goes through triton's JIT", error)
        return False


def launch(kernel, grid: tuple, args: tuple, constexprs: dict, num_warps: int, num_stages: int,
           options: Optional[dict] = None):
    """kernel[grid](*args, **constexprs, num_warps=..., num_stages=..., **options), with the JIT's per-call work
    skipped once this specialisation has been launched. args: every runtime parameter, positionally and in order;
    options: the backend's launch options besides warps and stages (launch_pdl). Returns the CompiledKernel (None
    under the interpreter)."""
    options = options or {}
    from triton.compiler import CompiledKernel
    from triton.runtime.driver import driver
    from triton.runtime.jit import JITFunction

    if not isinstance(kernel, JITFunction):  # the interpreter's kernels (and test doubles): nothing to skip
        return kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages, **options)
    device_index = driver.active.get_current_device()
    key = specialisation_key(kernel, device_index, args, constexprs, num_warps, num_stages, options)
    compiled = _compiled.get(key)
    if compiled is not None and _direct_launch_enabled:
        all_args = (*args, *_ordered_constexprs(kernel, args, constexprs))
        if _run_compiled(compiled, grid, driver.active.get_current_stream(device_index), all_args):
            return compiled
    compiled = kernel[grid](*args, **constexprs, num_warps=num_warps, num_stages=num_stages, **options)
    if isinstance(compiled, CompiledKernel):
        _compiled.remember(key, compiled)
    return compiled


class PreparedLaunch:
    """One launch site of a prepared op call (glacompiler/op/prepared.py): kernel, grid, constexprs, warps and
    stages are fixed, and so is the specialisation (the call's key fixes every int argument and every tensor's
    dtype and alignment), so after the first launch the compiled binary is called directly, with no key to
    build: through its C launcher where binary_launch knows the launcher's layout, else through
    CompiledKernel.run. `first_launch(args)` runs the first launch (default: launch()) and returns the
    CompiledKernel. `descriptors` maps argument positions that take a TMA descriptor to the function making it
    from the tensor the caller passes there, reading only its address (binary_launch remembers the encodings by
    address); `jit_forms` maps positions where the JIT takes another form of the caller's tensor (a bool mask viewed
    as uint8, a key range's row) to the function making it, a view at an offset the call's metadata fixes: the C
    launcher reads only addresses, so the binary takes the caller's tensor's plus that offset (_pointer_offsets).
    No address is checked at launch (Triton's launcher asks the driver for each tensor's): the call's key has
    settled every tensor's device. `launch_options`: the backend's options for the default first launch
    (launch_pdl, which the compiled binary's launcher keeps); a launch traced into a graph takes none (Inductor
    launches the kernel its own way), and takes `traced_form` (kernel, constexprs) where given: the kernel without
    what only a dependent launch uses (grid dependency control: dependent_launch.py says why a graph's launch takes
    none)."""

    __slots__ = ("kernel", "grid", "constexprs", "num_warps", "num_stages", "first_launch", "descriptors",
                 "jit_forms", "compiled", "binary", "device_index", "constexpr_values", "launch_options",
                 "traced_form")

    def __init__(self, kernel, grid: tuple, constexprs: dict, num_warps: int, num_stages: int, first_launch=None,
                 descriptors: Optional[dict] = None, jit_forms: Optional[dict] = None,
                 launch_options: Optional[dict] = None, traced_form: Optional[tuple] = None):
        if first_launch is not None and launch_options:
            raise ValueError("launch_options: only the default first launch takes them")
        self.kernel, self.grid, self.constexprs = kernel, tuple(grid), constexprs
        self.num_warps, self.num_stages = num_warps, num_stages
        self.first_launch = first_launch
        self.launch_options = launch_options or {}
        self.traced_form = traced_form or (kernel, constexprs)
        self.descriptors = descriptors or {}
        self.jit_forms = {**(jit_forms or {}), **self.descriptors}
        self.compiled = None
        self.binary = None
        self.device_index = None
        self.constexpr_values = ()

    def __call__(self, args: tuple):
        if tracing_launches():  # the caller's tensors (Inductor compiles for a bool mask's own dtype)
            if self.descriptors:
                raise NotImplementedError("launches that take TMA descriptors are not traced into graphs")
            traced_kernel, traced_constexprs = self.traced_form
            return traced_launch(traced_kernel, self.grid, args, traced_constexprs, self.num_warps, self.num_stages)
        compiled = self.compiled
        if compiled is not None and _direct_launch_enabled:
            runtime, driver = _triton_runtime()
            device = driver.active
            if device.get_current_device() == self.device_index:  # (else the binary of another device: the JIT)
                stream = device.get_current_stream(self.device_index)
                binary = self.binary
                if binary is not None and not launch_hooks_set(runtime):
                    try:
                        binary(stream, (*args, *self.constexpr_values))
                        return compiled
                    except TypeError as error:  # the C launcher parses its arguments before it launches
                        self.refuse_binary(error)
                all_args = (*jit_forms_of(args, self.jit_forms), *self.constexpr_values)
                if _run_compiled(compiled, self.grid, stream, all_args):
                    return compiled
        jit_args = jit_forms_of(args, self.jit_forms)
        if self.first_launch is not None:
            compiled = self.first_launch(jit_args)
        else:
            compiled = launch(self.kernel, self.grid, jit_args, self.constexprs, self.num_warps, self.num_stages,
                              self.launch_options)
        self._remember(compiled, args, jit_args)
        return compiled

    def refuse_binary(self, error: TypeError) -> None:
        """Its C launcher refused the arguments (it parses them before it launches): CompiledKernel.run from now on."""
        self.binary = None
        LOGGER.warning("%s: its C launcher refused the arguments (%s); launching through CompiledKernel.run",
                       getattr(self.compiled, "name", self.compiled), error)

    def _remember(self, compiled, args: tuple, jit_args: tuple) -> None:
        from triton.compiler import CompiledKernel
        from triton.runtime.driver import driver

        if isinstance(compiled, CompiledKernel) and self.compiled is None:
            self.constexpr_values = tuple(_ordered_constexprs(self.kernel, jit_args, self.constexprs))
            self.device_index = driver.active.get_current_device()
            pointers = _pointer_offsets(args, jit_args, self.descriptors)
            self.binary = (None if pointers is None
                           else BinaryLaunch.for_compiled(compiled, self.grid, self.descriptors, pointers))
            self.compiled = compiled


class LaunchSequence:
    """Prepared launches that take the same arguments, one after another on the current stream (a masked call's two
    passes). Once each has its binary for one device, with the same tensor positions and offsets and no TMA
    descriptor, a call does the per-call work once for all of them (device, stream, launch hooks, the tensors'
    addresses) and calls each C launcher; otherwise, and while traced, each launch runs as alone."""

    __slots__ = ("launches", "binaries", "device_index")

    def __init__(self, launches):
        self.launches = tuple(launches)
        self.binaries = None  # ((BinaryLaunch, constexpr values), ...) once every launch has a shared-argument binary
        self.device_index = None

    def __len__(self) -> int:
        return len(self.launches)

    def __iter__(self):
        return iter(self.launches)

    def __getitem__(self, index):
        """A launch, or a LaunchSequence of a slice of them."""
        item = self.launches[index]
        return LaunchSequence(item) if isinstance(index, slice) else item

    def __call__(self, args: tuple) -> None:
        binaries = self.binaries
        if binaries is not None and _direct_launch_enabled and not tracing_launches():
            runtime, driver = _triton_runtime()
            device = driver.active
            if device.get_current_device() == self.device_index and not launch_hooks_set(runtime):
                stream = device.get_current_stream(self.device_index)
                converted = binaries[0][0].converted(args)
                for index, (binary, constexpr_values) in enumerate(binaries):
                    try:
                        binary.launch_converted(stream, converted, constexpr_values)
                    except TypeError as error:  # (nothing launched by this one: the launcher parses first)
                        self.binaries = None
                        self.launches[index].refuse_binary(error)
                        for launch in self.launches[index:]:
                            launch(args)
                        return
                return
        for launch in self.launches:
            launch(args)
        self._share_binaries()  # (again after a launch alone: it may have refused its binary)

    def _share_binaries(self) -> None:
        self.binaries = None
        launches = self.launches
        first = launches[0].binary
        if first is None or first.descriptors:
            return
        for launch in launches:
            binary = launch.binary
            if (binary is None or binary.descriptors or binary.pointers != first.pointers
                    or launch.device_index != launches[0].device_index):
                return
        self.device_index = launches[0].device_index
        self.binaries = tuple((launch.binary, launch.constexpr_values) for launch in launches)


def _pointer_offsets(args: tuple, jit_args: tuple, descriptors: dict) -> Optional[dict]:
    """{position: byte offset} of the tensor arguments the binary takes as addresses: the caller's tensor's address
    plus the offset of its JIT form, a view whose offset the call's metadata fixes (a key range's rows: the key
    holds the range's strides). None where a JIT form is not a view of the caller's tensor (its address would
    differ per call): such a launch takes CompiledKernel.run, which makes the forms every call. A prepared launch's
    tensor positions are fixed: the call's key fixes which optional tensors it has, and plans pass a placeholder
    tensor where one is absent."""
    pointers = {}
    for position, value in enumerate(args):
        if not isinstance(value, Tensor) or position in descriptors:
            continue
        form = jit_args[position]
        if form is not value and not (isinstance(form, Tensor) and
                                      form.untyped_storage().data_ptr() == value.untyped_storage().data_ptr()):
            LOGGER.debug("argument %d: its JIT form is not a view of the caller's tensor; no direct launch", position)
            return None
        pointers[position] = form.data_ptr() - value.data_ptr()
    return pointers

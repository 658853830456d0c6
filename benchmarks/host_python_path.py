"""Host time of the op's Python path on any machine, no GPU needed: repeat calls as on CUDA, with Triton's C
launcher replaced by a function that does nothing (issue 13 goal 2).

The first call of each row runs the portable kernels under the Triton interpreter (CPU tensors), which prepares
the call as on a GPU. Then each prepared launch gets the binary launch a GPU's first launch would give it
(binary_launch.BinaryLaunch, tensors passed as addresses) over a no-op C launcher, and Triton's driver a stand-in
for device 0. So a row counts everything of a repeat call but the C launcher's argument parsing and the driver's
launch (cuLaunchKernelEx), and, on the op rows, the dispatcher (they call run_prepared, what the dispatcher runs).
CPU allocations stand in for CUDA's caching allocator. For an A/B, run two trees' copies alternately:

    for r in 1 2 3; do for t in base new; do PYTHONPATH=$t python benchmarks/host_python_path.py --label $t; done; done

Each row: the best of 7 rounds of 2000 back-to-back calls. GQA at Llama-3.2-1B widths (32 query / 8 KV heads of
64), batch 64, fp16 (host_ab.py's GPU rows, but a 64-key cache: the interpreter runs each row's first call).
--quick: batch 2, 20 calls a round (the test's run)."""
from __future__ import annotations

import argparse
import os

import torch

import glacompiler  # (loads no triton: the kernels do, on first use)
from glacompiler.kernels.common.binary_launch import BinaryLaunch, _LauncherParts, jit_forms_of
from glacompiler.kernels.common.triton_launch import PreparedLaunch, _pointer_offsets
from glacompiler.op.prepared import run_prepared

from host_ab import host_us_per_call  # (beside it)


class _StandInDriver:
    """Triton's active driver on a machine with one GPU: device 0, the default stream."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return 0


class _StandInBinary:
    """What BinaryLaunch reads of a CompiledKernel."""

    function, packed_metadata = 0, None

    class run:  # noqa: N801 - CompiledKernel.run is the launcher object
        launch_cooperative_grid, launch_pdl = False, False


def _no_op_launcher(*arguments):
    return None


def _launch_arguments(call) -> dict:
    """{prepared launch: the arguments of its launch} of one call (all made through PreparedLaunch.__call__)."""
    seen = {}
    real_call = PreparedLaunch.__call__

    def recording(launch, args):
        seen[launch] = args
        return real_call(launch, args)

    PreparedLaunch.__call__ = recording
    try:
        call()
    finally:
        PreparedLaunch.__call__ = real_call
    return seen


def _give_binaries(arguments: dict) -> None:
    """Each launch the binary launch of a GPU's first launch, over the no-op launcher."""
    parts = _LauncherParts(_no_op_launcher, {}, None)
    for launch, args in arguments.items():
        pointers = _pointer_offsets(args, jit_forms_of(args, launch.jit_forms), launch.descriptors)
        launch.compiled, launch.device_index = _StandInBinary, 0
        launch.constexpr_values = tuple(launch.constexprs.values())
        launch.binary = BinaryLaunch(parts, _StandInBinary, launch.grid, {}, pointers)


def rows(batch: int) -> list:
    torch.manual_seed(0)
    capacity = 64
    q = torch.randn(batch, 1, 32, 64, dtype=torch.float16)
    k, v = (torch.randn(batch, capacity, 8, 64, dtype=torch.float16) for _ in range(2))
    lengths = torch.full((batch,), capacity, dtype=torch.int32)
    mask = torch.ones(batch, 1, 1, capacity, dtype=torch.bool)
    key_range = torch.ops.glacompiler.mask_key_range(mask, batch, capacity)
    wrapper = glacompiler.attention_with_kvcache
    return [
        ("op, lengths", lambda: run_prepared(q, k, v, None, None, lengths, None, None, 0.125, True, 0)),
        ("op, mask + kv_range (two passes)",
         lambda: run_prepared(q, k, v, None, None, None, None, mask, 0.125, True, 0, key_range)),
        ("op, mask (range reduced per call)",
         lambda: run_prepared(q, k, v, None, None, None, None, mask, 0.125, True, 0)),
        ("wrapper, lengths", lambda: wrapper(q, k, v, cache_seqlens=lengths, softmax_scale=0.125)),
        ("wrapper, mask", lambda: wrapper(q, k, v, attn_mask=mask, softmax_scale=0.125)),
        ("wrapper, mask + kv_range",
         lambda: wrapper(q, k, v, attn_mask=mask, kv_range=key_range, softmax_scale=0.125)),
        # (its partials allocated per call: CPU tensors are not held between calls, as CUDA ones are)
        ("wrapper, lengths, 8 splits + combine",
         lambda: wrapper(q, k, v, cache_seqlens=lengths, softmax_scale=0.125, num_splits=8)),
    ]


def main() -> None:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton loads
    from triton.runtime.driver import driver

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="tree", help="the first column (which tree this is)")
    parser.add_argument("--quick", action="store_true", help="batch 2, one round of 20 calls")
    args = parser.parse_args()
    batch, calls, rounds = (2, 20, 1) if args.quick else (64, 2000, 7)
    measured = rows(batch)
    # The wrapper skips the dispatcher for CUDA tensors; these are CPU ones. A tree from before that choice had a
    # name (_runs_directly) cannot be made to take it: its wrapper rows are left out.
    if hasattr(glacompiler.op, "_runs_directly"):
        glacompiler.op._runs_directly = lambda q: True
    else:
        measured = [row for row in measured if not row[0].startswith("wrapper")]
    driver.set_active(_StandInDriver())  # (a first call runs the interpreter, which asks no driver)
    with torch.no_grad():
        for _, fn in measured:
            _give_binaries(_launch_arguments(fn))
        for name, fn in measured:
            us = host_us_per_call(fn, calls, rounds, synchronize=lambda: None)
            print(f"{args.label:>6} {name:<36} {us:6.2f} us", flush=True)


if __name__ == "__main__":
    main()

"""A size-matched read ceiling for the grid (decode_grid.py): the time a plain streaming read of a row's bytes takes on
this GPU, timed the way the op is (CUDA-graph replay), so that a row's fraction of the floor can be set against what
a kernel reading that many bytes reaches. The floor divides by a 2 GiB copy's bandwidth (bytes read plus written).
A read alone beats that rate at large sizes (about 1.05 of it on an H100), and at 75-150 MB (GTA's and GLA's
short rows) the launch, the ramp-up and the last wave's tail are no longer amortised. The read measures both.

The read: each program streams one contiguous slice of a buffer of the row's size in 32-bit words and folds it with
xor into one word it stores (nothing the compiler can drop, no arithmetic to wait on). The ceiling is the fastest of
a few launch shapes (programs per SM, warps, words a step), picked per size on the same card. Alone:

    python benchmarks/stream_read.py --mb 75 151 302 1074
"""
from __future__ import annotations

import argparse
import itertools

import torch
import triton
import triton.language as tl
import triton.testing

# (programs per SM, warps, 32-bit words a program reads a step): 8 or 16 KB a program a step, so 16-128 KB in flight
# per SM on Hopper without software pipelining, from two to eight resident programs.
LAUNCH_SHAPES = list(itertools.product((2, 4, 8), (4, 8), (2048, 4096)))


@triton.jit
def stream_read_kernel(WORDS, FOLDED, num_words, words_per_program, BLOCK: tl.constexpr):
    program = tl.program_id(0)
    start = program.to(tl.int64) * words_per_program
    end = tl.minimum(start + words_per_program, num_words)
    folded = tl.zeros([BLOCK], dtype=tl.int32)
    for offset in range(start, end, BLOCK):
        offsets = offset + tl.arange(0, BLOCK)
        folded ^= tl.load(WORDS + offsets, mask=offsets < end, other=0)
    tl.store(FOLDED + program, tl.xor_sum(folded, axis=0))


def read_launcher(words: torch.Tensor, folded: torch.Tensor, programs_per_sm: int, warps: int, block: int,
                  multiprocessors: int):
    """A call that launches the read of every word of `words` (int32) in one kernel; folded (int32, at least
    programs_per_sm x multiprocessors) takes each program's xor of its slice."""
    num_words = words.numel()
    programs = programs_per_sm * multiprocessors
    # Whole steps per program, so that only the last program's last step is masked.
    words_per_program = triton.cdiv(triton.cdiv(num_words, programs), block) * block
    grid = (triton.cdiv(num_words, words_per_program),)
    return lambda: stream_read_kernel[grid](words, folded, num_words, words_per_program, BLOCK=block,
                                            num_warps=warps)


def graph_us(call, rep: int = 100) -> float:
    """A call's time in us by CUDA-graph replay (do_bench_cudagraph's median), as the grid times every contender."""
    return triton.testing.do_bench_cudagraph(call, rep=rep, return_mode="median") * 1e3


class StreamRead:
    """A read of num_bytes (rounded up to whole 16-byte vectors) from its own buffer, at this card's fastest launch
    shape for that size; call() launches it."""

    def __init__(self, num_bytes: int, device: str = "cuda"):
        words = torch.randint(-2**31, 2**31 - 1, (-(-int(num_bytes) // 16) * 4,), dtype=torch.int32, device=device)
        multiprocessors = torch.cuda.get_device_properties(words.device).multi_processor_count
        most_programs = max(shape[0] for shape in LAUNCH_SHAPES) * multiprocessors
        folded = torch.empty(most_programs, dtype=torch.int32, device=device)
        launchers = {shape: read_launcher(words, folded, *shape, multiprocessors) for shape in LAUNCH_SHAPES}
        # A short replay per shape: the pick needs the order of 12 shapes, and the grid times the pick again in its
        # rounds.
        timed = {shape: graph_us(launch, rep=25) for shape, launch in launchers.items()}
        self.shape = min(timed, key=timed.get)
        self.call = launchers[self.shape]

    def describe(self) -> str:
        programs_per_sm, warps, block = self.shape
        return f"read: {programs_per_sm} programs/SM, {warps} warps, {block * 4 // 1024} KB a step"


def main() -> None:
    parser = argparse.ArgumentParser(description="The streaming-read time of buffers of these sizes on this GPU.")
    parser.add_argument("--mb", type=float, nargs="+", required=True, help="sizes in MB (10^6 bytes)")
    args = parser.parse_args()
    print(f"# {torch.cuda.get_device_name()}, triton {triton.__version__}; CUDA-graph replay, median")
    for megabytes in args.mb:
        read = StreamRead(int(megabytes * 1e6))
        microseconds = graph_us(read.call)
        print(f"{megabytes:10.1f} MB  {microseconds:9.1f} us  {megabytes * 1e6 / microseconds / 1e3:7.0f} GB/s  "
              f"({read.describe()})")
        del read
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

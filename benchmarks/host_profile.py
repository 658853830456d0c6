"""Where the host time of a decode step goes, without CUDA graphs.

Part 1, whole model (same models and sizes as bench_backend.py): the wall time of a step, the host time to
enqueue it (the call returns before the GPU finishes while the host is ahead), and a cProfile of a few steps.
Part 2, the op alone: host microseconds per call of the op and of each piece of its Python path, on a short
cache so that the GPU never holds the host back.

    python benchmarks/host_profile.py [--variants gla-2] [--top 25]
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

import glacompiler
from glacompiler.demo import install_plain_decode
from glacompiler.kernels import FAMILIES, KernelCall
from glacompiler.kernels.common.key_bounds import mask_as_kernel_operand
from glacompiler.kernels.common.mask_range import mask_key_range
from glacompiler.op.dispatch import choose_kernel
from glacompiler.op.validation import validate_inputs

from bench_backend import add_model_arguments, build, step_inputs


def host_and_wall_ms(decode, tokens, lengths, steps: int) -> tuple:
    """(host ms to enqueue one step, wall ms per step): one step between synchronisations."""
    host = []
    for _ in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        decode(tokens, lengths)
        host.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        decode(tokens, lengths)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / steps
    return sorted(host)[len(host) // 2] * 1e3, wall * 1e3


def allocate_outputs_only(call, spec, shape, config):
    """A family's launch replaced by the two allocations of its outputs."""
    q = call.q
    out = q.new_empty((*q.shape[:3], spec.head_dim_v))
    return out, q.new_empty(q.shape[:3], dtype=torch.float32)


@contextlib.contextmanager
def launches_stubbed_out():
    """Every kernel family's launch replaced by allocate_outputs_only (the host time of everything else)."""
    for family in FAMILIES:
        family.launch = allocate_outputs_only  # an instance attribute shadows the class's method
    try:
        yield
    finally:
        for family in FAMILIES:
            del family.launch


def profile_model(variant: str, args, device) -> None:
    model = build(variant, args, device)
    tokens, lengths = step_inputs(model, args, device)
    with torch.no_grad():
        install_plain_decode(model)
        for name, make in (
            ('backend="gla"', lambda: torch.compile(model.decode, backend=glacompiler.backend())),
            ("default backend", lambda: torch.compile(model.decode)),
        ):
            torch._dynamo.reset()
            decode = make()
            for _ in range(3):
                decode(tokens, lengths)
            host, wall = host_and_wall_ms(decode, tokens, lengths, args.steps)
            print(f"{variant}, {name}: host {host:.3f} ms/step, wall {wall:.3f} ms/step")
            if name.startswith("backend"):
                # The same step with the op's launches replaced by two allocations: the host time of everything
                # else (Inductor's code, the op's dispatch, checks and config lookup).
                with launches_stubbed_out():
                    host, wall = host_and_wall_ms(decode, tokens, lengths, args.steps)
                print(f"{variant}, {name}, op launches stubbed out: host {host:.3f} ms/step, wall {wall:.3f} ms/step")
                profiler = cProfile.Profile()
                torch.cuda.synchronize()
                profiler.enable()
                for _ in range(args.steps):
                    decode(tokens, lengths)
                profiler.disable()
                torch.cuda.synchronize()
                text = io.StringIO()
                pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(args.top)
                print("\n".join(line for line in text.getvalue().splitlines() if line.strip())[:6000])
    del model
    torch.cuda.empty_cache()


def per_call_us(fn, calls: int = 300) -> float:
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def kernel_times(fn, calls: int = 50) -> None:
    """GPU time per call of each kernel fn launches (is the loop below bound by the host or the GPU?)."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            print(f"    kernel {event.key[:60]:<60} {event.self_device_time_total / calls:8.1f} us/call "
                  f"x{event.count / calls:.0f}")


def profile_op(device) -> None:
    """GLA-2 at XL widths (16 query heads, 2 latent heads of 256 + rope 64), batch 64, a 256-slot cache."""
    batch, capacity = 64, 256
    dtype = torch.bfloat16
    q = torch.randn(batch, 1, 16, 256, device=device, dtype=dtype)
    cache = torch.randn(batch, capacity, 2, 256, device=device, dtype=dtype)
    q_rope = torch.randn(batch, 1, 16, 64, device=device, dtype=dtype)
    k_rope = torch.randn(batch, capacity, 64, device=device, dtype=dtype)
    mask = torch.ones(batch, 1, 1, capacity, device=device, dtype=torch.bool)
    seqlens = torch.full((batch,), capacity, device=device, dtype=torch.int32)
    op = torch.ops.glacompiler.attention_with_kvcache.default
    spec, shape = validate_inputs(q, cache, None, q_rope, k_rope, None, None, mask, 0.05, None)
    masked = KernelCall(q, cache, None, q_rope, k_rope, seqlens, None, mask, 0.05, False)
    unmasked = KernelCall(q, cache, None, q_rope, k_rope, seqlens, None, None, 0.05, False)
    family, config = choose_kernel(spec, shape, masked)
    mask_operand = mask_as_kernel_operand(mask)
    print(f"\nop host time per call (us), GLA-2 XL, batch {batch}, cache {capacity}, {family.name} kernels, {config}")
    rows = [
        ("op, with mask (what the backend calls)", lambda: op(q, cache, None, q_rope, k_rope, None, None, mask, 0.05,
                                                               False, 0)),
        ("op, with mask and cache_seqlens", lambda: op(q, cache, None, q_rope, k_rope, seqlens, None, mask, 0.05,
                                                        False, 0)),
        ("op, cache_seqlens, no mask", lambda: op(q, cache, None, q_rope, k_rope, seqlens, None, None, 0.05, False, 0)),
        ("  validate_inputs", lambda: validate_inputs(q, cache, None, q_rope, k_rope, None, None, mask, 0.05, None)),
        ("  choose_kernel", lambda: choose_kernel(spec, shape, masked)),
        ("  mask_key_range", lambda: mask_key_range(mask_operand, batch, capacity, True)),
        ("  torch.full (seqlens when none given)",
         lambda: torch.full((batch,), capacity, dtype=torch.int32, device=device)),
        ("  launch, with mask", lambda: family.launch(masked, spec, shape, config)),
        ("  launch, no mask", lambda: family.launch(unmasked, spec, shape, config)),
    ]
    kernel_times(rows[0][1])
    for _, fn in rows:  # warm up every row first: the host's clocks and caches, not the order, should not matter
        per_call_us(fn, calls=100)
    for name, fn in rows:
        print(f"  {name:<44} {per_call_us(fn):8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.set_defaults(variants=["gla-2"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    args.tiny = False
    device = torch.device("cuda")
    import triton

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    with torch.no_grad():
        profile_op(device)
    for variant in args.variants:
        profile_model(variant, args, device)


if __name__ == "__main__":
    main()

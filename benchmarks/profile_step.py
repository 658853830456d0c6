"""Where a whole-model decode step spends its GPU time: the top kernels of a few steps under torch.profiler.

Same models and sizes as bench_backend.py (paper XL widths, 8 layers, batch 64, static cache 8192, bf16).
For each variant it profiles the step as written (the reference modules call the fused op, eager) and under
backend="gla", and prints the kernels that take the most device time per step. With --cudagraphs the
backend="gla" step is captured in CUDA graphs, and the line before the kernels also gives the step's timeline:
from its first kernel's start to its last kernel's end, and the time in it when no kernel ran (launch gaps, the
graph's input copies being kernels too).

    python benchmarks/profile_step.py [--variants gla-2 gta-4] [--top 12] [--inductor-config freezing=True]
                                      [--cudagraphs]
"""
from __future__ import annotations

import argparse

import torch
import torch._inductor.config
from torch.profiler import ProfilerActivity, profile

import glacompiler
from glacompiler.demo import install_plain_decode

from bench_backend import add_model_arguments, build, fill_model_defaults, step_inputs
from inductor_settings import add_inductor_config_option, parse_inductor_settings, settings_in_effect  # (beside it)


def timeline(prof, steps: int) -> str:
    """Kernels per step, and per step the span from the first kernel's start to the last one's end and the idle
    time in it (the steps run back to back, so with the host ahead idle time is the GPU's own gaps)."""
    kernels = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                     if e.device_type == torch.autograd.DeviceType.CUDA)
    busy, covered_to = 0.0, None
    for start, end in kernels:  # union of the intervals (kernels of different streams may overlap)
        start = start if covered_to is None else max(start, covered_to)
        if end > start:
            busy += end - start
        covered_to = end if covered_to is None else max(covered_to, end)
    span = kernels[-1][1] - kernels[0][0]
    return (f"{len(kernels) / steps:.0f} kernels a step; timeline {span / steps / 1e3:.3f} ms a step, of which "
            f"{(span - busy) / steps:.0f} us idle")


def profile_steps(decode, model, args, device, cudagraphs: bool = False) -> None:
    tokens, lengths = step_inputs(model, args, device)

    def step():
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        decode(tokens, lengths)

    for _ in range(3):  # compile and warm up (CUDA-graph capture included) outside the profile
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events)
    print(f"    {timeline(prof, args.steps)}")
    print(f"    device time per step {total / args.steps / 1e3:.3f} ms; top kernels (us per step, calls per step):")
    for event in sorted(events, key=lambda e: -e.self_device_time_total)[: args.top]:
        print(f"    {event.self_device_time_total / args.steps:9.1f} {event.count / args.steps:5.1f}  {event.key[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--cudagraphs", action="store_true", help='the backend="gla" step in CUDA graphs')
    add_inductor_config_option(parser, "Inductor settings in effect while the step is compiled and traced "
                                       "(freezing=True needs that); values are Python literals")
    args = parser.parse_args()
    inductor_settings = parse_inductor_settings(parser, args.inductor_config)
    args.tiny = False
    fill_model_defaults(args, tiny=False)
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(), f"batch {args.batch}, cache {args.cache}, {args.layers} layers")
    if inductor_settings:
        print(f"Inductor settings in effect: {settings_in_effect(inductor_settings)}")
    for variant in args.variants:
        model = build(variant, args, device)
        with torch.no_grad():
            print(f"{variant}: reference modules (fused op called directly), eager")
            profile_steps(model.decode, model, args, device)
            install_plain_decode(model)
            torch._dynamo.reset()
            print(f'{variant}: plain decode under backend="gla"{", CUDA graphs" if args.cudagraphs else ""}')
            with torch._inductor.config.patch(inductor_settings):
                compiled = torch.compile(model.decode, backend=glacompiler.backend(cudagraphs=args.cudagraphs))
                profile_steps(compiled, model, args, device, args.cudagraphs)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Where a whole-model decode step spends its GPU time: the top kernels of a few steps under torch.profiler.

Same models and sizes as bench_backend.py (paper XL widths, 8 layers, batch 64, static cache 8192, bf16).
For each variant it profiles the step as written (the reference modules call the fused op, eager) and under
backend="gla", and prints the kernels that take the most device time per step.

    python benchmarks/profile_step.py [--variants gla-2 gta-4] [--top 12] [--inductor-config freezing=True]
"""
from __future__ import annotations

import argparse

import torch
import torch._inductor.config
from torch.profiler import ProfilerActivity, profile

import glacompiler
from glacompiler.demo import install_plain_decode

from bench_backend import add_model_arguments, build, step_inputs
from inductor_settings import add_inductor_config_option, parse_inductor_settings, settings_in_effect  # (beside it)


def profile_steps(decode, model, args, device) -> None:
    tokens, lengths = step_inputs(model, args, device)
    for _ in range(3):  # compile and warm up outside the profile
        decode(tokens, lengths)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            decode(tokens, lengths)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events)
    print(f"    device time per step {total / args.steps / 1e3:.3f} ms; top kernels (us per step, calls per step):")
    for event in sorted(events, key=lambda e: -e.self_device_time_total)[: args.top]:
        print(f"    {event.self_device_time_total / args.steps:9.1f} {event.count / args.steps:5.1f}  {event.key[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--top", type=int, default=12)
    add_inductor_config_option(parser, "Inductor settings in effect while the step is compiled and traced "
                                       "(freezing=True needs that); values are Python literals")
    args = parser.parse_args()
    inductor_settings = parse_inductor_settings(parser, args.inductor_config)
    args.tiny = False
    device = torch.device("cuda")
    print(torch.cuda.get_device_name(), f"batch {args.batch}, cache {args.cache}, {args.layers} layers")
    if inductor_settings:
        with torch._inductor.config.patch(inductor_settings):
            print(f"Inductor settings in effect: {settings_in_effect(inductor_settings)}")
    for variant in args.variants:
        model = build(variant, args, device)
        with torch.no_grad():
            print(f"{variant}: reference modules (fused op called directly), eager")
            profile_steps(model.decode, model, args, device)
            install_plain_decode(model)
            torch._dynamo.reset()
            print(f'{variant}: plain decode under backend="gla"')
            with torch._inductor.config.patch(inductor_settings):
                profile_steps(torch.compile(model.decode, backend=glacompiler.backend()), model, args, device)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()

"""Decode-step latency of whole models under backend="gla", against torch.compile's default backend and eager.

Models: GLA-2 and GTA-4 at the paper's XL widths (16 query heads of 128; GLA-2 caches two latent heads of 256
plus a 64-wide rope key, GTA-4 four tied heads of 128 plus the rope key), 8 layers, batch 64, static cache
8192 filled to its last slot, bf16, vocabulary 32000. Decode attention is written in plain PyTorch over the
static cache with a mask (glacompiler.demo.install_plain_decode), as a user model would; the first row runs
the reference modules' own decode (the fused op called directly, eager) for comparison. Without CUDA graphs
backend="gla" compiles with Inductor's C++ wrapper on CUDA; two more rows time both backends the other way.
On CUDA each row also gives its fraction of the step floor: the weights and the cache at the valid tokens over the
copy bandwidth measured in the same run (bench_decode.py's measure; issue 13 goal 4).

    python benchmarks/bench_backend.py                      # on an H100/H200
    python benchmarks/bench_backend.py --device cpu --tiny  # smoke run of the script (2 layers, batch 2, cache 64)
    python benchmarks/bench_backend.py --inductor-config freezing=True  # an Inductor setting for every configuration

Target (issue 3 section 6): backend="gla" at least 2x faster than the default backend at this size."""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch._inductor.config
from torch._dynamo.utils import counters

import glacompiler
from glacompiler.demo import install_plain_decode, mark_caches_static
from glacompiler.models import TinyLM
from glacompiler.presets import paper_config, tiny_config
from host_yardstick import python_ns_per_iteration  # (beside it)
from inductor_settings import add_inductor_config_option, parse_inductor_settings, settings_in_effect  # (beside it)


def build(variant: str, args, device: torch.device) -> TinyLM:
    torch.manual_seed(0)
    if args.tiny:
        config = tiny_config(variant, n_layers=args.layers)
    else:
        config = paper_config("xl", variant, n_layers=args.layers, vocab_size=args.vocab)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = TinyLM(config).eval().to(device=device, dtype=dtype)
    model.setup_cache(args.batch, args.cache)
    mark_caches_static(model)
    for cache in model.caches:
        for tensor in cache.tensors():
            tensor.normal_()  # a filled cache: every slot is read up to the lengths below
    return model


def floor_bytes(model: TinyLM, args) -> tuple:
    """(weight bytes, cache bytes) a decode step must read at the least: every weight once but the embedding
    table, of which it reads a row a sequence (a tied table is read whole as the head), and each sequence's cache
    up to its length (the whole cache here)."""
    embedding = model.embed.weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters()
                  if p is not embedding or model.config.tie_embeddings)
    return weights, args.batch * args.cache * model.cache_bytes_per_token()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# (layers, batch, cache) when not given: the GPU shapes, and --tiny's, small enough for a CPU smoke run
MODEL_DEFAULTS = {False: (8, 64, 8192), True: (2, 2, 64)}


def add_model_arguments(parser: argparse.ArgumentParser, tiny_flag: bool = False) -> None:
    """The model and shape flags this script shares with profile_step.py and host_profile.py (fill_model_defaults
    completes them); tiny_flag: the script has --tiny, whose defaults the help names too."""
    parser.add_argument("--variants", nargs="+", default=["gla-2", "gta-4"])
    for name, default, tiny in zip(("layers", "batch", "cache"), MODEL_DEFAULTS[False], MODEL_DEFAULTS[True]):
        parser.add_argument(f"--{name}", type=int,
                            help=f"default {default}" + (f" ({tiny} with --tiny)" if tiny_flag else ""))
    parser.add_argument("--vocab", type=int, default=32000)


def fill_model_defaults(args, tiny: bool) -> None:
    """The layers, batch and cache not given on the command line."""
    for name, default in zip(("layers", "batch", "cache"), MODEL_DEFAULTS[tiny]):
        if getattr(args, name) is None:
            setattr(args, name, default)


def step_inputs(model: TinyLM, args, device: torch.device) -> tuple:
    """(tokens [B, 1], cache_seqlens [B]) of one decode step over the full cache: the last slot is new."""
    tokens = torch.randint(0, model.config.vocab_size, (args.batch, 1), device=device)
    lengths = torch.full((args.batch,), args.cache, dtype=torch.int32, device=device)
    return tokens, lengths


def step_ms(decode, model: TinyLM, args, device: torch.device, cudagraphs: bool) -> tuple:
    """(median over rounds of the mean decode-step time, after warm-up (compile, CUDA-graph capture); the median
    of host_yardstick's ns an iteration, taken before each round)."""
    tokens, lengths = step_inputs(model, args, device)

    def run(count: int) -> None:
        for _ in range(count):
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            decode(tokens, lengths)

    run(args.warmup)
    rounds, host_speed = [], []
    for _ in range(args.rounds):
        host_speed.append(python_ns_per_iteration())
        synchronize(device)
        start = time.perf_counter()
        run(args.iters)
        synchronize(device)
        rounds.append((time.perf_counter() - start) * 1e3 / args.iters)
    return statistics.median(rounds), statistics.median(host_speed)


# --configurations names, in the order measure() runs them
CONFIGURATIONS = ("gla", "gla-graphs", "default", "reduce-overhead", "eager", "gla-python", "default-cpp")


def measure(variant: str, args, device: torch.device) -> tuple:
    """([(configuration, (ms per decode step, host ns an iteration))], a note on what the gla pass rewrote, (weight,
    cache) bytes)."""
    model = build(variant, args, device)
    floor = floor_bytes(model, args)
    rows = []
    with torch.no_grad():
        rows.append(("eager, fused op (reference modules)", step_ms(model.decode, model, args, device, False)))
        install_plain_decode(model)
        rewritten = gla_compiles = 0
        concatenated = counters["glacompiler"]["projections_concatenated"]
        aligned = counters["glacompiler"]["projections_aligned"]
        as_lengths = counters["glacompiler"]["masks_as_lengths"]
        for key, (name, make, cudagraphs, cuda_only, gla) in zip(CONFIGURATIONS, (
            ('backend="gla"', lambda: torch.compile(model.decode, backend=glacompiler.backend()), False, False, True),
            ('backend="gla", CUDA graphs', lambda: torch.compile(
                model.decode, backend=glacompiler.backend(cudagraphs=True)), True, True, True),
            ("default backend (inductor)", lambda: torch.compile(model.decode), False, False, False),
            ('default backend, mode="reduce-overhead"', lambda: torch.compile(
                model.decode, mode="reduce-overhead"), True, True, False),
            ("eager", lambda: model.decode, False, False, False),
            # Without CUDA graphs backend="gla" uses Inductor's C++ wrapper on CUDA; for comparison, both
            # backends the other way round.
            ('backend="gla", Python wrapper', lambda: torch.compile(
                model.decode, backend=glacompiler.backend(cpp_wrapper=False)), False, True, True),
            ("default backend, cpp_wrapper", lambda: torch.compile(model.decode, options={"cpp_wrapper": True}),
             False, True, False),
        )):
            if (cuda_only and device.type != "cuda") or key not in args.configurations:
                continue
            torch._dynamo.reset()
            glacompiler.reset_report()  # each gla compile's sites are counted below, before the next reset
            rows.append((name, step_ms(make(), model, args, device, cudagraphs)))
            if gla:
                gla_compiles += 1
                rewritten += sum(r.status == "rewritten" for r in glacompiler.compile_report())
        note = (f"{rewritten}/{gla_compiles * len(model.layers)} attention sites rewritten over {gla_compiles} "
                f"gla compile{'s' if gla_compiles != 1 else ''}")
        concatenated = counters["glacompiler"]["projections_concatenated"] - concatenated
        if concatenated:  # (under freezing: projections of one input in one GEMM, compiler/concat_projections.py)
            note += f"; {concatenated} projection GEMMs folded into others over them"
        aligned = counters["glacompiler"]["projections_aligned"] - aligned
        if aligned:  # (under freezing: GEMMs of odd widths padded, compiler/align_projections.py)
            note += f"; {aligned} GEMMs padded to aligned widths over them"
        as_lengths = counters["glacompiler"]["masks_as_lengths"] - as_lengths
        if as_lengths:  # (a mask that allows a prefix of the keys: compiler/trace/key_prefix.py)
            note += f"; {as_lengths} sites' masks given to the op as lengths"
    return rows, note, floor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser, tiny_flag=True)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (tiny_config) for a quick check")
    parser.add_argument("--configurations", nargs="+", choices=CONFIGURATIONS, default=list(CONFIGURATIONS),
                        help="which compiled configurations to time (the eager fused-op reference always runs)")
    add_inductor_config_option(parser, "Inductor settings for every configuration, baselines included, in effect "
                                       "while Dynamo traces (freezing=True needs that: Dynamo keeps the weights as "
                                       "constants only then); values are Python literals")
    args = parser.parse_args()
    inductor_settings = parse_inductor_settings(parser, args.inductor_config)
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu is a smoke test: add --tiny")
    fill_model_defaults(args, args.tiny)
    device = torch.device(args.device)
    if device.type == "cuda":
        import triton

        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print(f"{args.layers} layers, batch {args.batch}, cache {args.cache} (full), "
          f"{'bf16' if device.type == 'cuda' else 'fp32'}, decode step latency (ms, median of {args.rounds} x "
          f"{args.iters} steps); host: ns an iteration of a fixed Python loop before each round, median "
          f"(benchmarks/host_yardstick.py: un-graphed steps move with it)\n")
    if inductor_settings:
        print(f"Inductor settings in effect for every configuration: {settings_in_effect(inductor_settings)}\n")
    bandwidth = None
    if device.type == "cuda":
        from bench_decode import copy_bandwidth  # (beside it)

        bandwidth = copy_bandwidth()
        print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (2 GiB device copy, bytes read + written, this run)\n")
    for variant in args.variants:
        with torch._inductor.config.patch(inductor_settings):
            rows, note, (weight_bytes, cache_bytes) = measure(variant, args, device)
        times = {name: ms for name, (ms, _) in rows}
        print(f"{variant}: {note}")
        floor_ms = None
        if bandwidth is not None:
            floor_ms = (weight_bytes + cache_bytes) / bandwidth * 1e3
            print(f"  step floor {floor_ms:.3f} ms: {weight_bytes / 1e9:.2f} GB of weights and {cache_bytes / 1e9:.2f} "
                  f"GB of cache over the copy bandwidth")
        print(f"  {'':<44} {'ms/step':>9} {'vs default':>11} {'of floor':>9} {'host':>5}")
        for name, (ms, host) in rows:
            baseline = times.get(
                'default backend, mode="reduce-overhead"' if "CUDA graphs" in name else "default backend (inductor)")
            ratio = ""
            if baseline and name.startswith("backend"):
                # (two decimals, or two significant digits below 0.01: a slow step's ratio must not print as 0.00)
                speedup = baseline / ms
                ratio = f"{speedup:10.2f}x" if speedup >= 0.01 else f"{speedup:10.2g}x"
            of_floor = f"{floor_ms / ms:9.2f}" if floor_ms is not None else ""
            print(f"  {name:<44} {ms:9.3f} {ratio:>11} {of_floor:>9} {host:5.0f}")
        print()


if __name__ == "__main__":
    main()

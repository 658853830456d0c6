"""Decode-step latency of transformers models (random weights, no download) under eager, torch.compile's
default backend, mode="reduce-overhead", backend="gla" and backend="gla" with CUDA graphs (and, when asked,
gla-latent-op-calls: glacompiler.backend(latent_in_graph=False), and gla-python-wrapper:
glacompiler.backend(cpp_wrapper=False), each compared with gla).

Models (the widths of issue 12):
  llama        LlamaForCausalLM shaped like Llama-3.2-1B, 8 layers: hidden 2048, 32 query / 8 KV heads of 64,
               MLP 8192, vocabulary 32000; batch 64, a 3000-token prompt in a 4096 StaticCache.
  deepseek-v3  DeepseekV3ForCausalLM, 4 dense layers: 16 heads, kv_lora_rank 512, rope 64, nope 128, v 128
               (hidden 2048, q_lora_rank 1536, MLP 8192, vocabulary 32000); batch 32, 3000-token prompt, cache
               4096. transformers caches the latent and multiplies the whole of it by kv_b_proj at every step;
               under backend="gla" the decode sites are absorbed (report kind mla, form "... (absorbed)").
bf16 on CUDA. Each configuration gets its own cache with the same prompt prefilled eagerly in chunks, compiles
its forward at its first step (that step's wall time, compile included, is printed) and warms up; all stay alive,
and are then timed in --rounds rounds, every configuration once a round in changing order (CUDA events, one pair
per step; a round's figure is the median of --steps steps). Printed: the median of the rounds, their range, and the
sites the gla pass rewrote. On CUDA each row also gives its fraction of the step floor: the weights and the cache
at the valid tokens over the copy bandwidth measured in the same run (bench_decode.py's measure; issue 13 goal 4).
Profiles run after all timing. Steps without CUDA graphs are bound by the host, whose
speed moves from moment to moment on a shared machine: the rounds' range shows by how much.

    python benchmarks/bench_hf.py                                 # both models, on an H100/H200
    python benchmarks/bench_hf.py --models deepseek-v3 --batch 32 --profile gla,default
    python benchmarks/bench_hf.py --inductor-config freezing=True  # an Inductor setting for every configuration
    python benchmarks/bench_hf.py --device cpu --tiny             # smoke run of the script itself

Target (issue 12 section 4, DeepSeek-V3): gla with CUDA graphs at least 8x faster per step than
mode="reduce-overhead", gla at least 5x faster than the default backend."""
from __future__ import annotations

import argparse
import collections
import inspect
import statistics
import time

import torch
import torch._inductor.config

import glacompiler
from inductor_settings import add_inductor_config_option, parse_inductor_settings, settings_in_effect  # (beside it)
from host_yardstick import python_ns_per_iteration  # (beside it)

DEFAULTS = {  # model: (batch, prompt, cache)
    "llama": (64, 3000, 4096),
    "deepseek-v3": (32, 3000, 4096),
}
TINY_DEFAULTS = (2, 20, None)  # the cache: the prompt and the decode steps asked for


def model_config(name: str, args):
    import transformers

    if name == "llama":
        if args.tiny:
            sizes = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=16, vocab_size=128)
        else:
            sizes = dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
                         head_dim=64, vocab_size=args.vocab)
        return transformers.LlamaConfig(num_hidden_layers=args.layers or (2 if args.tiny else 8),
                                        max_position_embeddings=max(args.cache, 128), attn_implementation="sdpa",
                                        **sizes)
    if name == "deepseek-v3":
        if args.tiny:
            sizes = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, kv_lora_rank=32,
                         q_lora_rank=48, qk_rope_head_dim=16, qk_nope_head_dim=16, v_head_dim=16, vocab_size=128)
        else:
            sizes = dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=16, kv_lora_rank=512,
                         q_lora_rank=1536, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
                         vocab_size=args.vocab)
        layers = args.layers or (2 if args.tiny else 4)
        return transformers.DeepseekV3Config(
            num_hidden_layers=layers, first_k_dense_replace=layers, num_key_value_heads=sizes["num_attention_heads"],
            n_routed_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=64,
            max_position_embeddings=max(args.cache, 128), rope_scaling=None, attn_implementation="sdpa", **sizes)
    raise ValueError(f"unknown model {name!r}; choose from {sorted(DEFAULTS)}")


def build(name: str, args, device: torch.device, dtype: torch.dtype):
    import transformers

    config = model_config(name, args)
    torch.manual_seed(0)
    model_class = transformers.LlamaForCausalLM if name == "llama" else transformers.DeepseekV3ForCausalLM
    with torch.device(device):
        model = model_class(config)
    return model.to(dtype).eval(), config


class Decoder:
    """A StaticCache prefilled eagerly with a random prompt, then greedy decode steps through `forward`."""

    def __init__(self, model, config, args, device, dtype):
        import transformers

        self.model, self.device = model, device
        parameters = inspect.signature(transformers.StaticCache.__init__).parameters
        kwargs = {"config": config, "max_cache_len": args.cache}
        if "max_batch_size" in parameters:  # transformers 4.x
            kwargs.update(max_batch_size=args.batch, dtype=dtype, device=device)
        self.cache = transformers.StaticCache(**kwargs)
        forward_parameters = inspect.signature(model.forward).parameters
        self.cache_name = "cache" if "cache" in forward_parameters else "past_key_values"
        self.takes_position = "cache_position" in forward_parameters
        prompt = torch.randint(0, config.vocab_size, (args.batch, args.prompt),
                               generator=torch.Generator().manual_seed(1)).to(device)
        self.position = 0
        for start in range(0, args.prompt, args.prefill_chunk):  # chunks bound the prefill's activations
            self.tokens = self.step(model.forward, prompt[:, start:start + args.prefill_chunk])

    def step(self, forward, tokens):
        kwargs = {self.cache_name: self.cache, "use_cache": True, "logits_to_keep": 1}
        if self.takes_position:
            kwargs["cache_position"] = torch.arange(self.position, self.position + tokens.shape[1],
                                                    device=self.device)
        logits = forward(input_ids=tokens, **kwargs).logits
        self.position += tokens.shape[1]
        return logits[:, -1:].argmax(-1)


def cache_tensors(cache) -> list:
    """The key and value tensors of a transformers cache: per layer object (transformers 4.56 on) or in the older
    key_cache / value_cache lists."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        pairs = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers]
        return [t for pair in pairs for t in pair if isinstance(t, torch.Tensor)]
    return [t for t in (*getattr(cache, "key_cache", ()), *getattr(cache, "value_cache", ()))
            if isinstance(t, torch.Tensor)]


def floor_bytes(model, decoder: "Decoder", capacity: int, tokens: int) -> tuple:
    """(weight bytes, cache bytes) a decode step must read at the least: every weight once but the input embedding
    table, of which it reads a row a sequence (a tied table is read whole as the head: parameters() yields it once),
    and the cache as the model stores it, at `tokens` valid tokens of its `capacity`."""
    embedding = model.get_input_embeddings().weight
    tied = model.get_output_embeddings() is not None and model.get_output_embeddings().weight is embedding
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embedding or tied)
    stored = sum(t.numel() * t.element_size() for t in cache_tensors(decoder.cache))
    return weights, stored * tokens // capacity


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def decode_one_step(decoder: Decoder, forward, cudagraphs: bool) -> None:
    """One greedy step through `forward` (a new CUDA-graph step first where graphs are on)."""
    if cudagraphs:
        torch.compiler.cudagraph_mark_step_begin()
    decoder.tokens = decoder.step(forward, decoder.tokens)


def first_step(decoder: Decoder, forward, args, cudagraphs: bool) -> float:
    """The first step's wall ms (compile included), then the warm-up steps."""
    synchronize(decoder.device)
    start = time.perf_counter()
    decode_one_step(decoder, forward, cudagraphs)
    synchronize(decoder.device)
    first = (time.perf_counter() - start) * 1e3
    for _ in range(args.warmup):
        decode_one_step(decoder, forward, cudagraphs)
    return first


def median_step(decoder: Decoder, forward, args, cudagraphs: bool) -> float:
    """Median ms of args.steps back-to-back steps (CUDA events, one pair per step)."""
    times = []
    if decoder.device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(args.steps)]
        for begin, end in events:
            begin.record()
            decode_one_step(decoder, forward, cudagraphs)
            end.record()
        torch.cuda.synchronize()
        times = [begin.elapsed_time(end) for begin, end in events]
    else:
        for _ in range(args.steps):
            start = time.perf_counter()
            decode_one_step(decoder, forward, cudagraphs)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def round_order(names: list, round_index: int) -> list:
    """The configurations' order in a round: even rounds start at the round's index, odd rounds run the previous
    round backwards. From two rounds on, no configuration is timed right after the same one every round."""
    if round_index % 2:
        return round_order(names, round_index - 1)[::-1]
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


CONFIGURATIONS = {  # name: (make the forward, CUDA graphs, CUDA only, in the default set)
    "eager": (lambda forward: forward, False, False, True),
    "default": (lambda forward: torch.compile(forward), False, False, True),
    "reduce-overhead": (lambda forward: torch.compile(forward, mode="reduce-overhead"), True, True, True),
    "gla": (lambda forward: torch.compile(forward, backend=glacompiler.backend()), False, False, True),
    "gla+cudagraphs": (lambda forward: torch.compile(forward, backend=glacompiler.backend(cudagraphs=True)), True,
                       True, True),
    # Narrow latent sites on the Hopper kernel's op calls instead of the portable kernels launched from Inductor's
    # wrapper (gla's default without CUDA graphs): the A/B of that default.
    "gla-latent-op-calls": (lambda forward: torch.compile(forward, backend=glacompiler.backend(latent_in_graph=False)),
                            False, True, False),
    # Inductor's Python wrapper instead of the C++ one gla takes on CUDA without CUDA graphs: the step's side of
    # that trade (its compile side is compile_time.py --cpp-wrapper off).
    "gla-python-wrapper": (lambda forward: torch.compile(forward, backend=glacompiler.backend(cpp_wrapper=False)),
                           False, True, False),
}
BASELINES = {"gla": "default", "gla+cudagraphs": "reduce-overhead", "gla-latent-op-calls": "gla",
             "gla-python-wrapper": "gla"}


def describe_sites(records) -> str:
    """'8 rewritten gqa mask=lengths': sites counted by status, kind, absorption and how the op got the mask."""
    counts = collections.Counter(
        (r.status, r.kind or "?", " absorbed" if r.form.endswith("(absorbed)") else "",
         f" mask={r.mask}" if r.mask else "") for r in records)
    if not counts:
        return "no attention sites"
    return ", ".join(f"{n} {status} {kind}{absorbed}{mask}" for (status, kind, absorbed, mask), n in
                     sorted(counts.items()))


PROFILED_STEPS = 3
HOST_PROFILE_ENQUEUES = 10


def profiled_steps(decoder: Decoder, forward, cudagraphs: bool, activity: str) -> list:
    """torch.profiler's per-name averages over PROFILED_STEPS decode steps; activity "CUDA" or "CPU"."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[getattr(ProfilerActivity, activity)]) as prof:
        for _ in range(PROFILED_STEPS):
            decode_one_step(decoder, forward, cudagraphs)
        torch.cuda.synchronize()
    return prof.key_averages()


def profile_step(decoder: Decoder, forward, cudagraphs: bool, top: int) -> None:
    steps = PROFILED_STEPS
    events = [e for e in profiled_steps(decoder, forward, cudagraphs, "CUDA")
              if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(e.self_device_time_total for e in events)
    print(f"    profile: device time per step {total / steps / 1e3:.3f} ms; top kernels (us per step, calls):")
    for event in sorted(events, key=lambda e: -e.self_device_time_total)[:top]:
        print(f"    {event.self_device_time_total / steps:9.1f} {event.count / steps:5.1f}  {event.key[:100]}")


def host_profile_step(decoder: Decoder, forward, cudagraphs: bool, top: int) -> None:
    """Where a step's host time goes: the median host time to enqueue a step (the GPU is idle when it starts, so
    the call returns as soon as the host has enqueued everything unless a sync intervenes) and the host-side
    operators and launch calls of a few steps, by self CPU time."""
    enqueue = []
    for _ in range(HOST_PROFILE_ENQUEUES):
        torch.cuda.synchronize()
        start = time.perf_counter()
        decode_one_step(decoder, forward, cudagraphs)
        enqueue.append((time.perf_counter() - start) * 1e3)
    torch.cuda.synchronize()
    steps = PROFILED_STEPS
    events = profiled_steps(decoder, forward, cudagraphs, "CPU")
    launches = [e for e in events if "LaunchKernel" in e.key or e.key in ("cuLaunchKernelEx", "cudaLaunchKernelExC")]
    print(f"    host profile: {statistics.median(enqueue):.3f} ms to enqueue a step (median of "
          f"{HOST_PROFILE_ENQUEUES}); kernel "
          f"launches per step: " + ", ".join(f"{e.key} {e.count / steps:.0f} ({e.self_cpu_time_total / steps:.0f} us)"
                                             for e in launches))
    print("    top host operators (self CPU us per step, calls per step):")
    for event in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f"    {event.self_cpu_time_total / steps:9.1f} {event.count / steps:6.1f}  {event.key[:100]}")


# The profiles a run may ask for (CUDA only): option -> (what prints it, decode steps it takes).
PROFILES = {"profile": (profile_step, PROFILED_STEPS),
            "host_profile": (host_profile_step, HOST_PROFILE_ENQUEUES + PROFILED_STEPS)}


class Configuration:
    """A configuration's compiled forward on its own prefilled cache, its first step and its rewritten sites."""

    def __init__(self, name: str, model, config, args, device, dtype):
        make, self.cudagraphs, *_ = CONFIGURATIONS[name]
        glacompiler.reset_report()
        with torch.no_grad():
            self.decoder = Decoder(model, config, args, device, dtype)
            self.forward = make(model.forward)
            self.first = first_step(self.decoder, self.forward, args, self.cudagraphs)
        self.sites = describe_sites(glacompiler.compile_report()) if name.startswith("gla") else ""
        self.rounds: list = []
        self.host_speed: list = []  # host_yardstick's ns an iteration, right before each round

    def time_round(self, args) -> None:
        self.host_speed.append(python_ns_per_iteration())
        with torch.no_grad():
            self.rounds.append(median_step(self.decoder, self.forward, args, self.cudagraphs))


def run_model(name: str, args, device: torch.device, dtype: torch.dtype, bandwidth) -> None:
    """Every configuration is compiled and warmed up first, each on its own cache, and stays alive; then all are
    timed in args.rounds rounds of changing order (a host-bound step moves with the host's state from one moment
    to the next, so one configuration timed once, right after its compile, says little); the profilers run last,
    after every timing."""
    torch._dynamo.reset()  # the previous model's compiled code and CUDA-graph pools go first
    model, config = build(name, args, device, dtype)
    print(f"{name}: {config.num_hidden_layers} layers, hidden {config.hidden_size}, heads "
          f"{config.num_attention_heads}, batch {args.batch}, prompt {args.prompt}, cache {args.cache}, "
          f"{str(dtype).replace('torch.', '')}; ms/step: median over {args.rounds} rounds of changing order of "
          f"each round's median of {args.steps} steps (range: the rounds' lowest and highest); host: ns an iteration "
          f"of a fixed Python loop before each round, median (benchmarks/host_yardstick.py: un-graphed steps move with "
          f"it)")
    # One Dynamo cache entry per compiled configuration (each backend recompiles the forward once, a BACKEND_MATCH
    # guard failure): five at most, inside Dynamo's default limit of eight.
    chosen = [c for c in args.configurations if device.type == "cuda" or not CONFIGURATIONS[c][2]]
    configurations = {c: Configuration(c, model, config, args, device, dtype) for c in chosen}
    for round_index in range(args.rounds):
        for configuration in round_order(chosen, round_index):
            configurations[configuration].time_round(args)
    steps = {c: statistics.median(configurations[c].rounds) for c in chosen}
    # The floor at the fewest valid tokens a timed step reads (the first after the warm-up): later steps read more.
    tokens = args.prompt + args.warmup + 2
    weight_bytes, cache_bytes = floor_bytes(model, next(iter(configurations.values())).decoder, args.cache, tokens)
    floor_ms = None if bandwidth is None else (weight_bytes + cache_bytes) / bandwidth * 1e3
    print(f"  step floor: {weight_bytes / 1e9:.3f} GB of weights and {cache_bytes / 1e9:.3f} GB of cache at "
          f"{tokens} valid tokens" + ("" if floor_ms is None else
                                      f" over the copy bandwidth: {floor_ms:.3f} ms"))
    print(f"  {'configuration':<20} {'first step ms':>14} {'ms/step':>9} {'range':>15} {'of floor':>9} {'host':>5} "
          f"{'speed-up':>22}  sites")
    for configuration in chosen:
        run = configurations[configuration]
        baseline = BASELINES.get(configuration)
        speedup = f"{steps[baseline] / steps[configuration]:6.2f}x vs {baseline}" if baseline in steps else ""
        spread = f"{min(run.rounds):.3f}-{max(run.rounds):.3f}"
        host = statistics.median(run.host_speed)
        of_floor = f"{floor_ms / steps[configuration]:9.3f}" if floor_ms is not None else f"{'':9}"
        print(f"  {configuration:<20} {run.first:14.1f} {steps[configuration]:9.3f} {spread:>15} {of_floor} "
              f"{host:5.0f} {speedup:>22}  {run.sites}")
    for configuration in chosen if device.type == "cuda" else ():
        run = configurations[configuration]
        for option, (show, _) in PROFILES.items():
            if configuration in getattr(args, option):
                print(f"  {configuration}, {option.replace('_', ' ')}:")
                with torch.no_grad():
                    show(run.decoder, run.forward, run.cudagraphs, args.top)
    configurations.clear()
    print()


def decode_steps_needed(args) -> int:
    """Decode steps a configuration may take on its cache: the first, the warm-up, the rounds and, on CUDA, the
    profiles asked for."""
    profiled = sum(steps for option, (_, steps) in PROFILES.items() if getattr(args, option)) \
        if args.device == "cuda" else 0
    return 1 + args.warmup + args.rounds * args.steps + profiled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULTS), choices=list(DEFAULTS))
    parser.add_argument("--configurations", nargs="+", default=[c for c, made in CONFIGURATIONS.items() if made[3]],
                        choices=list(CONFIGURATIONS))
    parser.add_argument("--batch", type=int, help="default: 64 (llama), 32 (deepseek-v3); 2 with --tiny")
    parser.add_argument("--prompt", type=int, help="prompt tokens prefilled before decoding (default 3000)")
    parser.add_argument("--cache", type=int, help="StaticCache capacity (default 4096)")
    parser.add_argument("--layers", type=int, help="default: 8 (llama), 4 (deepseek-v3), 2 with --tiny")
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--prefill-chunk", type=int, default=1024, help="prompt tokens per eager prefill call")
    parser.add_argument("--steps", type=int, default=30, help="timed decode steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="decode steps after the first, before timing")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of timing, every configuration once a round in changing order")
    parser.add_argument("--profile", default="", help="comma-separated configurations to profile (CUDA)")
    parser.add_argument("--host-profile", default="",
                        help="comma-separated configurations whose host time per step is broken down (CUDA)")
    parser.add_argument("--top", type=int, default=12, help="kernels listed per profile")
    add_inductor_config_option(parser, "Inductor settings for every configuration, baselines included "
                                       "(freezing=True, max_autotune_gemm=True, ...; values are Python literals); "
                                       "the gla backend's own choices (its C++ wrapper without CUDA graphs) still "
                                       "apply on top")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny widths for a quick check of the script")
    args = parser.parse_args()
    if args.device == "cpu" and not args.tiny:
        parser.error("--device cpu is a smoke test: add --tiny")
    for option in ("rounds", "steps"):
        if getattr(args, option) < 1:
            parser.error(f"--{option} must be at least 1")
    for option in PROFILES:
        chosen = [p for p in getattr(args, option).split(",") if p]
        unknown = [p for p in chosen if p not in CONFIGURATIONS]
        if unknown:
            parser.error(f"--{option.replace('_', '-')}: unknown configurations {unknown}; "
                         f"choose from {list(CONFIGURATIONS)}")
        not_run = [p for p in chosen if p not in args.configurations]
        if not_run:  # (it would never be profiled)
            parser.error(f"--{option.replace('_', '-')}: {not_run} not among --configurations {args.configurations}")
        setattr(args, option, chosen)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        import triton

        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    inductor_settings = parse_inductor_settings(parser, args.inductor_config)
    bandwidth = None
    if device.type == "cuda":
        from bench_decode import copy_bandwidth  # (beside it)

        bandwidth = copy_bandwidth()
        print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s (2 GiB device copy, bytes read + written, this run)")
    for name in args.models:
        defaults = TINY_DEFAULTS if args.tiny else DEFAULTS[name]
        model_args = argparse.Namespace(**vars(args))
        for field, default in zip(("batch", "prompt", "cache"), defaults):
            if getattr(model_args, field) is None:
                setattr(model_args, field, default)
        if model_args.cache is None:
            model_args.cache = model_args.prompt + decode_steps_needed(model_args)
        if model_args.prompt + decode_steps_needed(model_args) > model_args.cache:
            parser.error(f"{name}: prompt + decode steps exceed the cache capacity {model_args.cache}")
        with torch._inductor.config.patch(inductor_settings):
            if inductor_settings:
                print("Inductor settings in effect for every configuration: "
                      f"{settings_in_effect(inductor_settings)}")
            run_model(name, model_args, device, dtype, bandwidth)


if __name__ == "__main__":
    main()

"""Compile time of a transformers LlamaForCausalLM decode step: backend="gla" against torch.compile's default
backend, each in a fresh process with empty caches ("cold"), then again in a second process that finds the
first one's caches ("warm": Inductor's FX-graph and AOTAutograd caches, our kernel cache).

The model is Llama-3.2-1B-shaped (hidden 2048, 32 query / 8 KV heads of 64, MLP 8192, vocab 32000) with
8 layers and random bf16 weights, batch 64, a StaticCache of 4096, decoding the token after a 3000-token
prompt. The timed step is the first call of the compiled forward on that token, which includes dynamo,
AOTAutograd, our pass, Inductor and the first launch (Triton compiles of Inductor's kernels and ours). The
cache is first written eagerly by a short prefill (16 tokens: it initialises the cache, and what the cache
holds changes no compiled graph). --tiny is the same structure at CPU size (8 layers, hidden 256, 8/2 heads
of 32, batch 2, prompt 24, cache 64, fp32).

Each row also gives the time inside our pass (AttentionRewritePass.__call__) and Inductor's phases as
torch._dynamo.utils.compile_times() measures them (the biggest few).

    python benchmarks/compile_time.py                 # on an H100/H200: full size, cpp_wrapper as the backend sets it
    python benchmarks/compile_time.py --tiny          # on CPU
    python benchmarks/compile_time.py --cpp-wrapper on   # both backends with Inductor's C++ wrapper (or off)
    python benchmarks/compile_time.py --shared-headers   # the C++ wrapper's precompiled headers already built
    python benchmarks/compile_time.py --shared-headers --cold-only --rounds 3 \\
        --env-variant off:GLACOMPILER_PREWARM_WRAPPER_HEADER=0,GLACOMPILER_PARALLEL_LAUNCHERS=0   # A/B rounds
    python benchmarks/compile_time.py --backends gla --profile 15   # where each first step's time goes (cProfile)
    python benchmarks/compile_time.py --profile-dump prof/   # each first step's raw cProfile stats, for pstats' callers
    python benchmarks/compile_time.py --inductor-config cpp_cache_precompile_headers=False   # an Inductor setting

Cold runs start from empty caches: Inductor's, Triton's, ours, and (unless --shared-headers) the precompiled
headers that Inductor builds once per machine for its C++ wrapper, outside TORCHINDUCTOR_CACHE_DIR. With
--shared-headers the header gla's wrapper uses is built first where the machine lacks it, so that no timed run
pays for it (on a fresh machine the first gla run would, and the figures would depend on the order of the runs).

Target (issue 13, goal 3): gla cold at most 1.3x default cold; gla warm at most 10 s."""
from __future__ import annotations

import argparse
import cProfile
import inspect
import json
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time

from inductor_settings import add_inductor_config_option, parse_inductor_settings, settings_in_effect  # (beside it)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFILL_TOKENS = 16
STEADY_STEPS = 20


def llama_config(args):
    import transformers

    if args.tiny:
        sizes = dict(hidden_size=256, intermediate_size=512, num_attention_heads=8, num_key_value_heads=2,
                     head_dim=32, vocab_size=1024)
    else:
        sizes = dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
                     head_dim=64, vocab_size=32000)
    return transformers.LlamaConfig(num_hidden_layers=args.layers, max_position_embeddings=args.cache,
                                    attn_implementation="sdpa", **sizes)


def make_static_cache(config, args, dtype, device):
    import transformers

    parameters = inspect.signature(transformers.StaticCache.__init__).parameters
    kwargs = {"config": config, "max_cache_len": args.cache}
    if "max_batch_size" in parameters:  # transformers 4.x
        kwargs.update(max_batch_size=args.batch, dtype=dtype, device=device)
    return transformers.StaticCache(**kwargs)


def forward_kwargs(model, cache, start: int, length: int, device) -> dict:
    """The cache argument as this transformers version names it, the positions, the last logits only."""
    import torch

    parameters = inspect.signature(model.forward).parameters
    kwargs = {("cache" if "cache" in parameters else "past_key_values"): cache, "use_cache": True}
    if "cache_position" in parameters:
        kwargs["cache_position"] = torch.arange(start, start + length, device=device)
    if "logits_to_keep" in parameters:
        kwargs["logits_to_keep"] = 1
    return kwargs


def compile_backend(name: str, cpp_wrapper: str):
    """The backend argument and options of torch.compile for 'default' or 'gla'."""
    import glacompiler

    choice = {"auto": None, "on": True, "off": False}[cpp_wrapper]
    if name == "gla":
        return glacompiler.backend(cpp_wrapper=choice), None
    return "inductor", (None if choice is None else {"cpp_wrapper": choice})


def time_pass_calls() -> list:
    """Wrap the pass's __call__ to add up the time spent inside it (one entry per graph)."""
    from glacompiler.compiler.graph_pass import AttentionRewritePass

    spent: list = []
    original = AttentionRewritePass.__call__

    def timed(self, graph):
        start = time.perf_counter()
        try:
            return original(self, graph)
        finally:
            spent.append(time.perf_counter() - start)

    AttentionRewritePass.__call__ = timed
    return spent


def inductor_phases(top: int = 8) -> dict:
    """The biggest phases (seconds, summed over calls) that dynamo and Inductor time themselves."""
    from torch._dynamo.utils import compilation_time_metrics

    totals = {name: sum(times) for name, times in compilation_time_metrics.items()}
    return dict(sorted(totals.items(), key=lambda item: -item[1])[:top])


def child(args) -> None:
    """One measurement in this process: prefill eagerly, then time the first and second compiled steps."""
    import torch
    import transformers
    from torch._dynamo.utils import counters

    import glacompiler

    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = llama_config(args)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval().to(device=device, dtype=dtype)
    cache = make_static_cache(config, args, dtype, device)
    prefill = min(args.prompt, PREFILL_TOKENS)
    prompt = torch.randint(0, config.vocab_size, (args.batch, prefill), device=device)
    pass_times = time_pass_calls()

    def synchronize():
        if device.type == "cuda":
            torch.cuda.synchronize()

    backend, options = compile_backend(args.backend, args.cpp_wrapper)
    settings = parse_inductor_settings(argparse.ArgumentParser(), args.inductor_config)
    with torch.no_grad(), torch._inductor.config.patch(settings):
        in_effect = settings_in_effect(settings)
        logits = model(input_ids=prompt, **forward_kwargs(model, cache, 0, prefill, device)).logits
        token = logits[:, -1:].argmax(-1)
        step = torch.compile(model.forward, backend=backend, options=options)
        times = []
        profiler = cProfile.Profile() if args.profile or args.profile_file else None
        for position in (args.prompt, args.prompt + 1):
            synchronize()
            start = time.perf_counter()
            if profiler is not None and not times:
                profiler.enable()
            step(input_ids=token, **forward_kwargs(model, cache, position, 1, device))
            synchronize()
            if profiler is not None and not times:
                profiler.disable()
                if args.profile_file:
                    profiler.dump_stats(args.profile_file)
            times.append(time.perf_counter() - start)
        # The steady step afterwards (no compile): host time to enqueue it and wall time, medians.
        hosts, walls = [], []
        for position in range(args.prompt + 2, args.prompt + 2 + STEADY_STEPS):
            kwargs = forward_kwargs(model, cache, position, 1, device)
            synchronize()
            start = time.perf_counter()
            step(input_ids=token, **kwargs)
            hosts.append(time.perf_counter() - start)
            synchronize()
            walls.append(time.perf_counter() - start)
    report = glacompiler.compile_report() if args.backend == "gla" else []
    print(json.dumps({
        "first_step_s": times[0], "second_step_s": times[1], "step_ms": statistics.median(walls) * 1e3,
        "step_host_ms": statistics.median(hosts) * 1e3, "pass_s": sum(pass_times),
        "pass_calls": len(pass_times), "rewritten": sum(r.status == "rewritten" for r in report),
        "sites": len(report), "phases": inductor_phases(args.phases),
        "counters": {group: dict(counters[group]) for group in ("inductor", "aot_autograd", "glacompiler")},
        "profile": top_functions(profiler, args.profile) if profiler is not None else [],
        "inductor_settings": in_effect,
    }))


def top_functions(profiler, count: int) -> list:
    """Where a cProfile run's time went: the `count` functions with the most time of their own, then the `count`
    with the most cumulative time below the outer frames (those holding 90% of the run or more, the compile's
    own call stack). Rows: [name, cumulative s, own s]."""
    stats = pstats.Stats(profiler).stats  # (file, line, function) -> (calls, primitive calls, own, cumulative, callers)
    rows = [[f"{os.path.basename(path)}:{line}({function})", cumulative, own]
            for (path, line, function), (_, _, own, cumulative, _) in stats.items()]
    total = max((row[1] for row in rows), default=0.0)
    by_own = sorted(rows, key=lambda row: row[2], reverse=True)[:count]
    below_outer = [row for row in rows if row[1] < 0.9 * total and row not in by_own]
    return by_own + sorted(below_outer, key=lambda row: row[1], reverse=True)[:count]


def with_installed_package(python_path: str) -> str:
    """A PYTHONPATH with the device machine's install of the package (ROOT) first."""
    return os.pathsep.join([ROOT] + [p for p in python_path.split(os.pathsep) if p])


def run_child(args, backend: str, cache_dir: str, run: str = "cold", extra_env: dict | None = None,
              label: str | None = None) -> dict:
    """One fresh process compiling under `backend` with the caches in cache_dir and extra_env over this process's
    environment; label (the backend's name unless given) and `run` name its profile dump."""
    env = dict(os.environ, **(extra_env or {}), TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_dir, "inductor"),
               TRITON_CACHE_DIR=os.path.join(cache_dir, "triton"),
               GLACOMPILER_CACHE_DIR=os.path.join(cache_dir, "glacompiler"))
    if not args.shared_headers:
        # Inductor keeps the C++ wrapper's precompiled headers in its default cache dir under the temp dir,
        # whatever TORCHINDUCTOR_CACHE_DIR says: a temp dir of our own makes "cold" a fresh machine.
        env["TMPDIR"] = os.path.join(cache_dir, "tmp")
        os.makedirs(env["TMPDIR"], exist_ok=True)
    env["PYTHONPATH"] = with_installed_package(env.get("PYTHONPATH", ""))
    command = [sys.executable, os.path.abspath(__file__), "--child", "--backend", backend,
               "--cpp-wrapper", args.cpp_wrapper, "--layers", str(args.layers), "--batch", str(args.batch),
               "--prompt", str(args.prompt), "--cache", str(args.cache), "--profile", str(args.profile),
               "--phases", str(args.phases)] + \
        (["--tiny"] if args.tiny else []) + \
        (["--inductor-config", *args.inductor_config] if args.inductor_config else []) + \
        (["--profile-file", os.path.join(os.path.abspath(args.profile_dump),
                                         f"{(label or backend).replace(' ', '-')}_{run}.prof")]
         if args.profile_dump else [])
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{backend} run failed:\n{result.stderr[-6000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def primer_command(args) -> list | None:
    """--shared-headers: the command that builds the machine's precompiled header for gla's CUDA C++ wrapper before
    any timed run, so that every cold run finds it (a machine that has it already answers in a fraction of a
    second); None where no run builds that wrapper (--tiny runs on the CPU, --cpp-wrapper off, no gla run)."""
    if not args.shared_headers or args.tiny or args.cpp_wrapper == "off" or "gla" not in args.backends.split(","):
        return None
    return [sys.executable, os.path.abspath(__file__), "--prime-header"]


def prime_header() -> None:
    """The header the backend's glue wrapper asks for (glue_wrapper_build.py's flags), made as the backend makes it
    ahead of a graph (wrapper_header_prewarm.py), here waited for."""
    import torch

    if not torch.cuda.is_available():
        return
    from glacompiler.compiler.glue_wrapper_build import install as build_gpu_glue_minimally
    from glacompiler.compiler.wrapper_header_prewarm import start

    build_gpu_glue_minimally()
    thread = start({"cpp_wrapper": True}, "cuda")
    if thread is not None:
        thread.join()


def describe(name: str, row: dict, phase_count: int = 5) -> str:
    fx = {state: row["counters"]["inductor"].get(f"fxgraph_cache_{state}", 0) for state in ("hit", "miss", "bypass")}
    aot = {state: row["counters"]["aot_autograd"].get(f"autograd_cache_{state}", 0)
           for state in ("hit", "miss", "bypass")}
    sites = f", {row['rewritten']}/{row['sites']} sites rewritten" if row["sites"] else ""
    reused = row["counters"]["glacompiler"].get("kernel_analysis_memo_hits", 0)
    sites += f", {reused} kernel analyses reused" if reused else ""
    phases = ", ".join(f"{phase} {seconds:.1f}" for phase, seconds in list(row["phases"].items())[:phase_count])
    return (f"{name:<12} first step {row['first_step_s']:7.2f} s  (second {row['second_step_s'] * 1e3:8.2f} ms, "
            f"then {row['step_ms']:.3f} ms a step, {row['step_host_ms']:.3f} ms of it to enqueue)  "
            f"pass {row['pass_s']:6.2f} s in {row['pass_calls']} graphs{sites}\n{'':<13}FX-graph cache {fx}, "
            f"AOTAutograd cache {aot}\n{'':<13}phases (s): {phases}" +
            "".join(f"\n{'':<13}{cumulative:8.2f} s cumulative {own:8.2f} s own  {name}"
                    for name, cumulative, own in row.get("profile", [])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="CPU-sized model")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--prompt", type=int)
    parser.add_argument("--cache", type=int)
    parser.add_argument("--backends", default="default,gla")
    parser.add_argument("--cpp-wrapper", choices=("auto", "on", "off"), default="auto",
                        help="auto: each backend's own choice (gla: on for CUDA without graphs; default: off)")
    parser.add_argument("--shared-headers", action="store_true",
                        help="use the machine's precompiled C++ headers (built once per machine and compiler "
                             "flags; gla's is built before the timed runs where missing): cold then means a new "
                             "model on a machine that compiled one before")
    parser.add_argument("--cold-only", action="store_true",
                        help="skip the warm runs (repeated cold A/B rounds in less time)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every backend (and variant) this many times, interleaved, and print medians")
    parser.add_argument("--env-variant", action="append", default=[], metavar="LABEL:NAME=VALUE[,NAME=VALUE]",
                        help="also run gla with these environment variables, labelled 'gla LABEL' (an A/B of a "
                             "GLACOMPILER_* switch: off:GLACOMPILER_PARALLEL_LAUNCHERS=0)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="profile each first step (cProfile) and print its N functions with the most time")
    parser.add_argument("--profile-dump", metavar="DIR",
                        help="write each first step's raw cProfile stats to DIR/<backend>_<cold|warm>.prof "
                             "(pstats reads them: callers, not only the --profile list)")
    parser.add_argument("--phases", type=int, default=5, metavar="N",
                        help="print the N longest phases that dynamo and Inductor time themselves (no profiler)")
    add_inductor_config_option(parser, "Inductor settings for every run (cpp_cache_precompile_headers=False, ...; "
                                       "values are Python literals); the gla backend's own choices apply on top")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--profile-file", help=argparse.SUPPRESS)  # (a child's: where its --profile-dump stats go)
    parser.add_argument("--prime-header", action="store_true", help=argparse.SUPPRESS)  # (primer_command's child)
    args = parser.parse_args()
    for name, full, tiny in (("batch", 64, 2), ("prompt", 3000, 24), ("cache", 4096, 64)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    if args.child:
        child(args)
        return
    if args.prime_header:
        prime_header()
        return
    if args.inductor_config:
        parse_inductor_settings(parser, args.inductor_config)  # refused here, before any run
    if args.rounds < 1:
        parser.error(f"--rounds takes a count of at least 1, not {args.rounds}")
    labels = set()
    for variant in args.env_variant:
        problem = variant_problem(variant, labels)
        if problem:
            parser.error(f"--env-variant {variant!r}: {problem}")
    if args.profile_dump:
        os.makedirs(args.profile_dump, exist_ok=True)
    print(f"LlamaForCausalLM, {args.layers} layers, {'tiny' if args.tiny else 'Llama-3.2-1B widths'}, "
          f"batch {args.batch}, prompt {args.prompt}, StaticCache {args.cache}, cpp_wrapper {args.cpp_wrapper}, "
          f"{'the machine' if args.shared_headers else 'fresh'} precompiled headers")
    primer = primer_command(args)
    if primer is not None:
        start = time.perf_counter()
        subprocess.run(primer, check=True,
                       env=dict(os.environ, PYTHONPATH=with_installed_package(os.environ.get("PYTHONPATH", ""))))
        print(f"the machine's precompiled header for gla's C++ wrapper: ready in {time.perf_counter() - start:.1f} s "
              "(built here where it was missing)")
    rows: dict = {}  # label -> one row a round
    runs = planned_runs(args)
    try:
        for round_index in range(args.rounds):
            shift = round_index % len(runs)  # (each round starts one run later: no run always goes first)
            for label, backend, extra_env in runs[shift:] + runs[:shift]:
                measure(args, rows, label, backend, extra_env, round_index)
    finally:
        print(summary(rows, args.rounds))


def measure(args, rows: dict, label: str, backend: str, extra_env: dict, round_index: int) -> None:
    """One cold run (and its warm run unless --cold-only) of a label, in fresh caches; rows[label] gets the rows."""
    if args.rounds > 1:
        print(f"round {round_index + 1} of {args.rounds}: {label}", flush=True)
    name = f"{label} round {round_index + 1}" if args.rounds > 1 else label  # (its profile dump's)
    with tempfile.TemporaryDirectory(prefix=f"compile_time_{backend}_") as cache_dir:
        cold = run_child(args, backend, cache_dir, extra_env=extra_env, label=name)
        rows.setdefault(label, []).append(cold)
        if cold["inductor_settings"]:
            print(f"{label}: Inductor settings in effect: {cold['inductor_settings']}")
        print(describe(f"{label} cold", cold, args.phases), flush=True)
        if not args.cold_only:
            warm = run_child(args, backend, cache_dir, "warm", extra_env, name)
            rows.setdefault(label + " warm", []).append(warm)
            print(describe(f"{label} warm", warm, args.phases), flush=True)


RUN_ENVIRONMENT = ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR", "GLACOMPILER_CACHE_DIR", "TMPDIR", "PYTHONPATH")


def variant_parts(variant: str) -> tuple:
    """An --env-variant's (label, whether it has the colon, [(name, "=" or "", value)] of its settings)."""
    label, colon, settings = variant.partition(":")
    return label, bool(colon), [item.partition("=") for item in settings.split(",")]


def variant_problem(variant: str, labels: set) -> str:
    """Why an --env-variant cannot run ("" where it can); its label is added to `labels` (those already given)."""
    label, has_colon, settings = variant_parts(variant)
    if not has_colon or not re.fullmatch(r"[A-Za-z0-9_-]+", label) or label == "warm":
        return "takes LABEL:NAME=VALUE[,NAME=VALUE], LABEL of letters, digits, - and _ (not 'warm')"
    if label in labels:
        return f"the label {label} is given twice"
    labels.add(label)
    if not all(name and equals for name, equals, _ in settings):
        return "takes LABEL:NAME=VALUE[,NAME=VALUE]"
    reserved = [name for name, _, _ in settings if name in RUN_ENVIRONMENT]
    return f"{', '.join(reserved)} is set by each run itself" if reserved else ""


def planned_runs(args) -> list:
    """(label, backend, extra environment) of each run in a round: the backends, then gla under each --env-variant."""
    runs = [(backend, backend, {}) for backend in args.backends.split(",")]
    for label, _, settings in map(variant_parts, args.env_variant):
        runs.append((f"gla {label}", "gla", {name: value for name, _, value in settings}))
    return runs


def summary(rows: dict, rounds: int) -> str:
    """Each label's first steps over the rounds (median), and the cold ratios to default's median."""
    def first_steps(label):
        return [row["first_step_s"] for row in rows.get(label, [])]

    lines = []
    if rounds > 1:
        for label in rows:
            steps = first_steps(label)
            lines.append(f"{label:<16} first step median {statistics.median(steps):6.2f} s over {len(steps)} rounds "
                         f"({', '.join(f'{step:.2f}' for step in steps)})")
    if first_steps("default"):
        default_cold = statistics.median(first_steps("default"))
        for label in [label for label in rows if label.startswith("gla") and not label.endswith(" warm")]:
            warm = first_steps(label + " warm")
            warm_text = f"{statistics.median(warm):.1f} s (target <= 10)" if warm else "not run"
            lines.append(f"{label} cold / default cold: {statistics.median(first_steps(label)) / default_cold:.2f}x "
                         f"(target <= 1.3); {label} warm: {warm_text}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""Where the host time of a decode step goes, without CUDA graphs.

Part 1, whole model (same models and sizes as bench_backend.py): the wall time of a step, the host time to
enqueue it (the call returns before the GPU finishes while the host is ahead), and a cProfile of a few steps.
Part 1 also gives a compiled site's added host time: the step's host time less the same step with each op
call's prepared run replaced by the allocation of its outputs, per op call (the op's dispatch and key lookup stay
in; the op called through the dispatcher alone is part 2's "op, repeat"), and what Inductor launching the
portable kernels itself saves a site (backend="gla" against glacompiler.backend(graph_launches=False), whose
sites all call the op; a Hopper latent site's kernel is launched by attention_into's Python either way, and at most
16 query rows per latent head and 1 GiB of cache the backend plans it on the portable kernels, its latent_in_graph). Part 2, the op alone: host
microseconds per call of the op (first call of a metadata key vs repeat, a prepared call) and of each piece of
its Python path, on a short cache so that the GPU never holds the host back. Part 3, a compiled site alone:
compiled graphs (backend="gla", C++ wrapper, no CUDA graphs) that chain 1 and N op calls, each call's output the
next one's query; a site's host time is (host time of the N-site graph - the 1-site graph's) / (N - 1), each the
host time to enqueue a burst of back-to-back calls short enough that the GPU's launch queue never fills (the
graph's own entry, guards and the chain's inputs cancel out), the two graphs' bursts alternating round by round and
the median of the rounds' differences taken.

    python benchmarks/host_profile.py [--variants gla-2] [--top 25]
    python benchmarks/host_profile.py --parts sites
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import time
from typing import Optional
from unittest import mock

import torch
from torch._dynamo.utils import counters
from torch.profiler import ProfilerActivity, profile

import glacompiler
from glacompiler.demo import install_plain_decode
from glacompiler.kernels.common.triton_launch import LaunchSequence, PreparedLaunch
from glacompiler.op.dispatch import empty_outputs
from glacompiler.op.library import ATTENTION_SCHEMA
from glacompiler.op.prepared import PreparedCall, _prepared, call_key, clear_prepared_calls

from bench_backend import add_model_arguments, build, fill_model_defaults, step_inputs
from host_ab import burst_us
from host_yardstick import python_ns_per_iteration

PARTS = ("model", "op", "sites")
# Our attention kernels, by name (the portable family's and the Hopper latent one's): part 3 counts their launches.
ATTENTION_KERNELS = ("decode_attention_split_kernel", "latent_decode_hopper_kernel")


def host_and_wall_ms(decode, tokens, lengths, steps: int) -> tuple:
    """(host ms to enqueue one step, wall ms per step): one step between synchronisations."""
    host = sorted(burst_us(lambda: decode(tokens, lengths), 1, torch.cuda.synchronize) for _ in range(steps))
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        decode(tokens, lengths)
    torch.cuda.synchronize()
    wall = (time.perf_counter() - start) / steps
    return host[len(host) // 2] / 1e3, wall * 1e3


@contextlib.contextmanager
def kernel_launches_stubbed_out():
    """Every prepared kernel launch (attention, mask range, combine) does nothing: the host time of the rest."""
    originals = PreparedLaunch.__call__, LaunchSequence.__call__
    PreparedLaunch.__call__ = LaunchSequence.__call__ = lambda self, args: None
    try:
        yield
    finally:
        PreparedLaunch.__call__, LaunchSequence.__call__ = originals


@contextlib.contextmanager
def compiled_afresh():
    """Graphs compiled without Inductor's and AOTAutograd's caches, so that our pass runs on each."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    with inductor_config.patch(fx_graph_cache=False), functorch_config.patch(enable_autograd_cache=False):
        yield


@contextlib.contextmanager
def prepared_runs_replaced(counter: Optional[list] = None):
    """Every prepared op call's run replaced by the allocation of its outputs (and counted into `counter`):
    what is left of the op is the dispatcher, the key and the lookup."""
    original = PreparedCall.run

    def allocate_outputs_only(self, q, k_cache, v_cache, *rest, **keywords):
        if counter is not None:
            counter.append(1)
        return empty_outputs(q, k_cache, v_cache)

    PreparedCall.run = allocate_outputs_only
    try:
        yield
    finally:
        PreparedCall.run = original


def profile_model(variant: str, args, device) -> None:
    model = build(variant, args, device)
    tokens, lengths = step_inputs(model, args, device)
    with torch.no_grad():
        install_plain_decode(model)
        hosts = {}
        for name, make in (
            ('backend="gla"', lambda model=model: torch.compile(model.decode, backend=glacompiler.backend())),
            ('backend="gla", op calls', lambda model=model: torch.compile(
                model.decode, backend=glacompiler.backend(graph_launches=False))),
            ("default backend", lambda model=model: torch.compile(model.decode)),
        ):
            torch._dynamo.reset()
            decode = make()
            launched_before = counters["glacompiler"]["launched_in_graph"]
            with compiled_afresh():  # (the count below comes from our pass, which a cached graph skips)
                for _ in range(3):
                    decode(tokens, lengths)
            in_graph = counters["glacompiler"]["launched_in_graph"] - launched_before
            host, wall = host_and_wall_ms(decode, tokens, lengths, args.steps)
            hosts[name] = host
            print(f"{variant}, {name}: host {host:.3f} ms/step, wall {wall:.3f} ms/step"
                  + (f" ({in_graph} op calls launched by Inductor)" if name.startswith("backend") else ""))
            if name == 'backend="gla", op calls':
                # The same step with the op's kernel launches stubbed out (the host time of everything else:
                # Inductor's code, the op's dispatch, key lookup and argument assembly), then with the op's
                # prepared runs replaced by output allocations: the difference per op call is what a fused
                # site adds beyond dispatch and lookup.
                with kernel_launches_stubbed_out():
                    stub_host, stub_wall = host_and_wall_ms(decode, tokens, lengths, args.steps)
                print(f"{variant}, {name}, kernel launches stubbed out: host {stub_host:.3f} ms/step, "
                      f"wall {stub_wall:.3f} ms/step")
                calls: list = []
                with prepared_runs_replaced(calls):
                    decode(tokens, lengths)
                    sites = len(calls)
                    bare_host, _ = host_and_wall_ms(decode, tokens, lengths, args.steps)
                print(f"{variant}, {name}, op runs replaced by output allocations: host {bare_host:.3f} ms/step; "
                      f"{sites} op calls per step: a site's run adds {(host - bare_host) * 1e3 / max(sites, 1):.1f} "
                      f"us of host time (launches included)")
                saved = host - hosts['backend="gla"']
                print(f"{variant}: Inductor launching the kernels of the step's op calls saves {saved:.3f} ms of "
                      f"host time a step, {saved * 1e3 / max(sites, 1):.1f} us a site")
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
    us = burst_us(fn, calls, torch.cuda.synchronize)
    torch.cuda.synchronize()
    return us


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
    kv_range = torch.ops.glacompiler.mask_key_range(mask, batch, capacity)
    masked_args = (q, cache, None, q_rope, k_rope, None, None, mask, 0.05, False, 0)
    op(*masked_args)
    prepared = _prepared[call_key(*masked_args, None, 0.0, None, None, -1, -1)]
    print(f"\nop host time per call (us), GLA-2 XL, batch {batch}, cache {capacity}, "
          f"{type(prepared.plan).__name__}")

    def first_call():
        clear_prepared_calls()  # every call validates, chooses and plans again (the binary stays compiled)
        op(*masked_args)

    def wrapper_call():
        glacompiler.attention_with_kvcache(q, cache, q_rope=q_rope, k_rope_cache=k_rope, cache_seqlens=seqlens,
                                           softmax_scale=0.05)

    def with_grad(fn):
        def run():
            with torch.enable_grad():
                fn()
        return run

    def stubbed(fn):
        def run():
            with kernel_launches_stubbed_out():
                fn()
        return run

    rows = [
        ("op, first call of a key, with mask", first_call),
        ("op, repeat, with mask (what the backend calls)", lambda: op(*masked_args)),
        ("op, repeat, with mask and kv_range (hoisted)",
         lambda: op(q, cache, None, q_rope, k_rope, None, None, mask, 0.05, False, 0, kv_range)),
        ("op, repeat, cache_seqlens, no mask",
         lambda: op(q, cache, None, q_rope, k_rope, seqlens, None, None, 0.05, False, 0)),
        ("op, repeat, no lengths, no mask",
         lambda: op(q, cache, None, q_rope, k_rope, None, None, None, 0.05, False, 0)),
        ("attention_with_kvcache (no_grad: no dispatcher), repeat, lengths", wrapper_call),
        ("attention_with_kvcache, grad enabled (dispatcher), repeat, lengths", with_grad(wrapper_call)),
        ("  the op's key", lambda: call_key(*masked_args, None, 0.0, None, None, -1, -1)),
        ("  op repeat with mask, kernel launches stubbed out", stubbed(lambda: op(*masked_args))),
        ("  op repeat, cache_seqlens, launches stubbed out",
         stubbed(lambda: op(q, cache, None, q_rope, k_rope, seqlens, None, None, 0.05, False, 0))),
        ("  the outputs' two allocations",
         lambda: (q.new_empty((batch, 1, 16, 256)), q.new_empty((batch, 1, 16), dtype=torch.float32))),
        ("  mask_key_range op (the backend's hoisted one)",
         lambda: torch.ops.glacompiler.mask_key_range(mask, batch, capacity)),
    ]
    # The dispatcher's own cost for a Python kernel with the op's schema (what every op call pays, compiled sites
    # included, before our code runs): a probe op whose kernel returns the outputs it is handed.
    probe_library = torch.library.Library("glacompiler_host_probe", "DEF")
    probe_library.define(ATTENTION_SCHEMA.replace("attention_with_kvcache(", "probe(", 1))
    outputs = empty_outputs(q, cache, None)
    probe_library.impl("probe", lambda *args: outputs, "CUDA")
    probe_library.impl("probe", lambda *args: outputs, "CPU")
    probe = torch.ops.glacompiler_host_probe.probe.default
    rows.append(("  the dispatcher alone (a probe op of the same schema)", lambda: probe(*masked_args)))
    kernel_times(rows[1][1])
    for _, fn in rows:  # warm up every row first: the host's clocks and caches, not the order, should not matter
        per_call_us(fn, calls=100)
    for name, fn in rows:
        print(f"  {name:<68} {min(per_call_us(fn) for _ in range(5)):8.1f}")


def chained_sites(op_call, step_operands, sites: int):
    """A step of `sites` op calls, each call's output the next one's query (so Inductor keeps every site);
    step_operands makes the operands the sites share from the step's inputs, once a step."""
    def step(q, *operands):
        operands = step_operands(*operands)
        for _ in range(sites):
            q = op_call(q, *operands)
        return q
    return step


def site_cases(device) -> list:
    """(name, op call of (q, *shared operands) -> out, shared operands of the inputs, q, inputs, backend options):
    decode sites of batch 64. The GPU takes longer over a step than the host takes to enqueue it; the bursts keep the
    host from waiting (burst_us)."""
    op = torch.ops.glacompiler.attention_with_kvcache.default
    bf16, batch = torch.bfloat16, 64

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=bf16)

    lengths = torch.full((batch,), 500, device=device, dtype=torch.int32)
    mask = torch.ones(batch, 1, 1, 512, device=device, dtype=torch.bool)
    gqa = (randn(batch, 512, 8, 64), randn(batch, 512, 8, 64))
    latent = (randn(batch, 256, 2, 256), randn(batch, 1, 128, 64), randn(batch, 256, 64))

    def unchanged(*operands):
        return operands

    def with_key_range(k, v, m):  # the step's key range, computed once for its sites (as the backend hoists it)
        return k, v, m, torch.ops.glacompiler.mask_key_range(m, batch, 512)

    def latent_call(q, c, qr, kr, n):
        return op(q, c, None, qr, kr, n, None, None, 0.05, False, 0)[0]

    return [
        ("GQA 32/8/64, lengths", lambda q, k, v, n: op(q, k, v, None, None, n, None, None, 0.125, True, 0)[0],
         unchanged, randn(batch, 1, 32, 64), (*gqa, lengths), {}),
        ("GQA 32/8/64, mask + the step's kv_range",
         lambda q, k, v, m, r: op(q, k, v, None, None, None, None, m, 0.125, True, 0, r)[0],
         with_key_range, randn(batch, 1, 32, 64), (*gqa, mask), {}),
        # 64 query rows a latent head: the Hopper latent kernel (Gluon), which Inductor cannot launch. By default the
        # graph allocates its buffers and launches the combine, and calls attention_into for the kernel
        # (op/into_buffers.py); with graph_launches=False it calls the op, which does all of that in Python.
        ("GLA-2 128 heads, lengths (attention_into)", latent_call, unchanged, randn(batch, 1, 128, 256),
         (*latent, lengths.clamp(max=256)), {}),
        ("GLA-2 128 heads, lengths (an op call)", latent_call, unchanged, randn(batch, 1, 128, 256),
         (*latent, lengths.clamp(max=256)), {"graph_launches": False}),
    ]


def attention_kernels_per_step(fn) -> int:
    """Our attention kernels' launches in one call of fn (CUDA), counted by the profiler."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(event.count for event in prof.key_averages()
               if event.device_type == torch.autograd.DeviceType.CUDA
               and any(name in event.key for name in ATTENTION_KERNELS))


def compiled_chain(op_call, step_operands, sites: int, q, operands, device, options: dict):
    """(the compiled step of `sites` chained calls, op calls the graph launches itself), checked: it computes what the
    op's calls one by one compute (the same kernels: this checks the graph's wiring), and on CUDA it launches
    `sites` times the attention kernels of one site (checked by the caller). options: the backend's, beside the
    C++ wrapper on CUDA."""
    launched_before = counters["glacompiler"]["launched_in_graph"]
    backend = glacompiler.backend(cpp_wrapper=True if device.type == "cuda" else None, **options)
    step = torch.compile(chained_sites(op_call, step_operands, sites), backend=backend, dynamic=False,
                         fullgraph=True)
    # GLACOMPILER_STRICT=1: where the backend would fall back with a warning (op calls instead of the graph's own
    # launches, Inductor's Python wrapper instead of the C++ one asked for) it raises, so the graph is the one named.
    with compiled_afresh(), mock.patch.dict(os.environ, GLACOMPILER_STRICT="1"):
        result = step(q, *operands)
    expected = q
    for _ in range(sites):
        expected = op_call(expected, *step_operands(*operands))
    torch.testing.assert_close(result, expected)
    return step, counters["glacompiler"]["launched_in_graph"] - launched_before


def profile_compiled_sites(device, chain: int, rounds: int = 60, calls: int = 8) -> dict:
    """Part 3: a compiled site's host time, from graphs of 1 and `chain` sites (C++ wrapper, no CUDA graphs, static
    shapes), their bursts alternating round by round; returns each case's median us a site. (On CPU a smoke test:
    no C++ wrapper, the op's CPU path.)"""
    if rounds < 2:
        raise ValueError(f"rounds: at least 2 (for the differences' quartiles), got {rounds}")
    on_cuda = device.type == "cuda"
    synchronize = torch.cuda.synchronize if on_cuda else (lambda: None)
    per_site = {}
    wrapper = "C++ wrapper" if on_cuda else "CPU: Python wrapper"
    print(f"\ncompiled site host time (us; backend=\"gla\", {wrapper}, no CUDA graphs, static shapes; graphs of "
          f"1 and {chain} sites, batch 64, bf16; bursts of {calls} steps, {rounds} rounds alternating the graphs)")
    try:
        for name, op_call, step_operands, q, operands, options in site_cases(device):
            torch._dynamo.reset()
            steps, launched, kernels = {}, {}, {}
            for sites in (1, chain):
                step, launched[sites] = compiled_chain(op_call, step_operands, sites, q, operands, device, options)
                steps[sites] = lambda step=step: step(q, *operands)
                if on_cuda:
                    kernels[sites] = attention_kernels_per_step(steps[sites])
            if on_cuda and not (kernels[1] >= 1 and kernels[chain] == chain * kernels[1]):
                raise AssertionError(f"{name}: attention kernels a step {kernels}, not {chain} times one site's")
            for fn in steps.values():  # warm up
                burst_us(fn, calls, synchronize)
            host_ns = python_ns_per_iteration()
            bursts = {sites: [] for sites in steps}
            for _ in range(rounds):
                for sites, fn in steps.items():
                    bursts[sites].append(burst_us(fn, calls, synchronize))
            synchronize()
            differences = [(longer - one) / (chain - 1) for one, longer in zip(bursts[1], bursts[chain])]
            per_site[name] = statistics.median(differences)
            quartiles = statistics.quantiles(differences, n=4)
            for sites in steps:
                print(f"  {name:<44} {sites} site(s): {statistics.median(bursts[sites]):7.1f} us a step "
                      f"({launched[sites]} op calls launched by Inductor"
                      + (f", {kernels[sites]} attention kernels)" if on_cuda else ")"))
            print(f"  {name:<44} a site: {per_site[name]:7.1f} us (quartiles {quartiles[0]:.1f}-{quartiles[2]:.1f}; "
                  f"host {host_ns:.0f} -> {python_ns_per_iteration():.0f} ns an iteration)")
            if on_cuda:  # the same burst behind a busy GPU: longer than the idle one if the host waits for the GPU
                torch.cuda._sleep(200_000_000)
                busy = burst_us(steps[chain], calls, lambda: None)
                print(f"  {name:<44} {chain} sites with the GPU busy before the burst: {busy:7.1f} us a step")
                synchronize()
    finally:
        torch._dynamo.reset()
    return per_site


def parse_arguments(argv: Optional[list] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.set_defaults(variants=["gla-2"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="model: part 1, op: part 2, sites: part 3 (default: all)")
    parser.add_argument("--chain", type=int, default=9, help="op calls in part 3's longer graph")
    args = parser.parse_args(argv)
    if args.chain < 2:
        parser.error("--chain: at least 2 calls")
    args.tiny = False
    fill_model_defaults(args, tiny=False)
    return args


def main() -> None:
    args = parse_arguments()
    device = torch.device("cuda")
    import triton

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    if "op" in args.parts:
        with torch.no_grad():
            profile_op(device)
    if "sites" in args.parts:
        with torch.no_grad():
            profile_compiled_sites(device, args.chain)
    if "model" in args.parts:
        for variant in args.variants:
            profile_model(variant, args, device)


if __name__ == "__main__":
    main()

"""Tensor-parallel decode (issue 14): per-step latency and tokens/s at TP 1 and TP 2, under torchrun.

    torchrun --nproc-per-node 2 benchmarks/bench_tp.py [--quick] [--json tp.json]
    torchrun --nproc-per-node 2 benchmarks/bench_tp.py --tiny        # CPU, gloo, tiny sizes: a smoke test
(glacompiler importable: installed, the wheel on PYTHONPATH, or PYTHONPATH=. in a checkout)

Every rank runs every configuration: at TP 1 each GPU runs the whole model on its own (no communication, the
single-GPU baseline, measured on both cards at once); at TP 2 the model is sharded with glacompiler.parallel
(NCCL over NVLink). Times are the slowest rank's. Rank 0 prints.

0. CUDA-graph capture check, first and under a watchdog (--capture-timeout): 50 all-reduces captured in one
   graph and replayed (an early try here hung in such a capture). On a hang the run stops with a traceback of
   where it hung; rerun with --no-graphs to measure without CUDA graphs.
1. The all-reduce of a [B, d_model] bf16 activation (two per decoder layer at TP 2), eager and graph-replayed.
2. Attention alone at the paper's widths (Hq 128; MLA 512+64, GLA-2 2x256+64, GTA and GQA as
   glacompiler.presets.PAPER_SPECS; paged, page 64, every sequence full): the per-rank layout
   (glacompiler.parallel.local_spec), kernel time by CUDA-graph replay, bytes each device reads, and the
   fraction of the floor (those bytes / the measured copy bandwidth, as bench_decode.py).
3. A stack of 8 decoder layers at d_model 4096, MLP 14336, 32 query heads of 128 (MLA 512+64, GLA-2 2x256+64,
   GQA 8 KV heads, GTA 8 tied heads + rope 64; full-rank queries), static caches: per-step latency eager (the
   modules call the fused op), the eager step captured in a CUDA graph (kernel time by replay), and compiled
   with backend="gla" (each layer's decode compiled once and reused by the 8 layers), plain and captured in a
   CUDA graph, for a few cells at TP 2 (batch 8 and 32 at 128K; compiles cost tens of seconds each). Attention per device is the op
   alone on the layer's own cache times 8; all-reduce per step is 16 all-reduces.
Configurations whose weights and caches do not fit a GPU are listed as such. The whole run stays within
--budget-s: cells left when it is spent are listed as skipped.

NVLink multicast stays off (glacompiler.parallel.environment), set before torch.distributed starts."""
from __future__ import annotations

import os
import sys

from glacompiler.parallel.environment import keep_nvlink_multicast_off

keep_nvlink_multicast_off()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import faulthandler  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from typing import Callable, Optional  # noqa: E402

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

import glacompiler  # noqa: E402
from glacompiler.compiler import backend as gla_backend  # noqa: E402
from glacompiler.demo import install_plain_decode  # noqa: E402
from glacompiler.kernels import family_for_spec  # noqa: E402
from glacompiler.models import DecoderLayer, ModelConfig  # noqa: E402
from glacompiler.parallel import (  # noqa: E402
    cache_bytes_per_device,
    init_tensor_parallel,
    local_spec,
    shard_decoder_layer,
)
from glacompiler.presets import PAPER_SPECS, attention_config  # noqa: E402
from glacompiler.spec import AttentionSpec, ProblemShape  # noqa: E402

GiB = 2**30
CAPTURED_ALL_REDUCES = 50


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What one run measures."""

    attention_specs: dict  # name -> AttentionSpec (whole, before sharding)
    stack_variants: tuple
    d_model: int
    n_heads: int
    head_dim: int
    rope_dim: int
    ffn_dim: int
    n_layers: int
    batches: tuple
    caches: tuple
    page_size: int
    compiled: tuple  # (batch, cache) cells of the stack also timed compiled, at TP > 1


def paper_sizes(quick: bool) -> Sizes:
    return Sizes(attention_specs={name: PAPER_SPECS[name] for name in ("mla", "gla2", "gta", "gqa")},
                 stack_variants=("mla", "gla-2", "gqa-8", "gta-8"), d_model=4096, n_heads=32, head_dim=128,
                 rope_dim=64, ffn_dim=14336, n_layers=8, batches=(1, 8, 32), caches=(32768, 131072),
                 page_size=64, compiled=() if quick else ((8, 131072), (32, 131072)))


def tiny_sizes() -> Sizes:
    specs = {"mla": AttentionSpec.latent(16, 1, 64, 16, paged=True),
             "gla2": AttentionSpec.latent(16, 2, 32, 16, paged=True),
             "gta": AttentionSpec.grouped_tied(8, 4, 32, 16, paged=True),
             "gqa": AttentionSpec.grouped(8, 4, 32, paged=True)}
    return Sizes(attention_specs=specs, stack_variants=("mla", "gla-2", "gqa-8", "gta-8"), d_model=128, n_heads=16,
                 head_dim=32, rope_dim=16, ffn_dim=256, n_layers=2, batches=(1, 2), caches=(64, 128), page_size=16,
                 compiled=((2, 128),))


# ---- timing ------------------------------------------------------------------------------------------------


class Clock:
    """Milliseconds per call of fn: wall time of many calls between two device synchronisations; the slowest
    rank's figure."""

    def __init__(self, device: torch.device):
        self.device = device

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def per_call(self, fn: Callable, calls: int, warmup: int = 3) -> float:
        for _ in range(warmup):
            fn()
        self.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        self.synchronize()
        return slowest_rank((time.perf_counter() - start) * 1e3 / calls, self.device)

    def replayed(self, fn: Callable, replays: int, calls_per_graph: int = 1) -> float:
        """Kernel time per call of fn: calls_per_graph calls captured in one CUDA graph, replayed (several calls
        per graph keep short kernels from waiting on the host's replay launches); nan on CPU."""
        if self.device.type != "cuda":
            return math.nan

        def calls():
            for _ in range(calls_per_graph):
                fn()

        graph = capture(calls)
        return self.per_call(graph.replay, replays) / calls_per_graph


def capture(fn: Callable) -> "torch.cuda.CUDAGraph":
    """fn captured in a CUDA graph after warm-up calls on a side stream (lazy allocations and autotuning happen
    outside the capture)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    return graph


def slowest_rank(value: float, device: torch.device) -> float:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor.item()


def copy_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device copy, bytes read plus bytes written (bench_decode.py's measure)."""
    elements = (512 if device.type == "cuda" else 8) * 2**20
    source = torch.randn(elements, device=device)
    target = torch.empty_like(source)
    ms = Clock(device).per_call(lambda: target.copy_(source), 20)
    return 2 * elements * 4 / (ms * 1e-3)


class Watchdog:
    """Ends the process with every thread's traceback when a step takes longer than timeout_s (a hung NCCL
    capture cannot be interrupted any other way). torchrun then stops the other ranks."""

    def __init__(self, timeout_s: float, what: str):
        self.timeout_s, self.what = timeout_s, what

    def __enter__(self):
        print(f"[watchdog] {self.what}: up to {self.timeout_s:.0f} s", file=sys.stderr, flush=True)
        faulthandler.dump_traceback_later(self.timeout_s, exit=True)
        return self

    def __exit__(self, *exc):
        faulthandler.cancel_dump_traceback_later()
        return False


# ---- 0 and 1: all-reduce -------------------------------------------------------------------------------------


def check_capture(mesh, sizes: Sizes, device: torch.device, timeout_s: float) -> bool:
    """50 all-reduces of a [8, d_model] bf16 activation in one CUDA graph, replayed; the sums checked."""
    from torch.distributed._functional_collectives import all_reduce, wait_tensor

    group = mesh.get_group()
    rank = dist.get_rank(group)
    value = torch.full((8, sizes.d_model), float(rank + 1), dtype=torch.bfloat16, device=device)
    results = []

    def many():
        results.clear()
        for _ in range(CAPTURED_ALL_REDUCES):
            results.append(wait_tensor(all_reduce(value, "sum", group)))  # waited inside the capture

    with Watchdog(timeout_s, f"capture and replay of {CAPTURED_ALL_REDUCES} all-reduces in one CUDA graph"):
        start = time.perf_counter()
        graph = capture(many)
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        expected = sum(range(1, mesh.size() + 1))
        ok = all(bool((r == expected).all()) for r in results)
        seconds = time.perf_counter() - start
    say(f"CUDA-graph capture of {CAPTURED_ALL_REDUCES} all-reduces: {'OK' if ok else 'WRONG SUMS'} "
        f"({seconds:.1f} s)")
    return ok


def all_reduce_ms(mesh, batch: int, d_model: int, device: torch.device, graphs: bool) -> tuple[float, float]:
    """(eager, graph-replayed) milliseconds of one all-reduce of [batch, d_model] bf16."""
    from torch.distributed._functional_collectives import all_reduce, wait_tensor

    group = mesh.get_group()
    activation = torch.randn(batch, d_model, dtype=torch.bfloat16, device=device)
    clock = Clock(device)
    eager = clock.per_call(lambda: wait_tensor(all_reduce(activation, "sum", group)), 100, warmup=10)
    replayed = math.nan
    if graphs and device.type == "cuda":
        def one():
            wait_tensor(all_reduce(activation, "sum", group))

        replayed = clock.replayed(one, 20, calls_per_graph=CAPTURED_ALL_REDUCES)
    return eager, replayed


# ---- 2: attention alone ----------------------------------------------------------------------------------------


def attention_inputs(spec: AttentionSpec, batch: int, capacity: int, page_size: int, device: torch.device) -> dict:
    """The op's arguments for a full paged cache of `spec` (bf16 on a GPU, fp32 on CPU), random values."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype, generator=generator)

    pages = batch * capacity // page_size
    inputs = dict(q=randn(batch, 1, spec.num_q_heads, spec.head_dim_q),
                  k_cache=randn(pages, page_size, spec.num_kv_heads, spec.head_dim_k),
                  v_cache=None if spec.tied else randn(pages, page_size, spec.num_kv_heads, spec.head_dim_v),
                  cache_seqlens=torch.full((batch,), capacity, dtype=torch.int32, device=device),
                  page_table=torch.randperm(pages, device=device, generator=generator).to(torch.int32).view(batch, -1))
    if spec.rope_dim:
        inputs.update(q_rope=randn(batch, 1, spec.num_q_heads, spec.rope_dim),
                      k_rope_cache=randn(pages, page_size, spec.rope_dim))
    return inputs


def attention_bytes(spec: AttentionSpec, batch: int, tokens_per_sequence: int, element: int) -> int:
    """What the op reads and writes at the least: every cached token once, the query read, the output written."""
    per_query = spec.num_q_heads * (spec.head_dim_q + spec.rope_dim + spec.head_dim_v)
    return (batch * tokens_per_sequence * spec.cache_elements_per_token + batch * per_query) * element


def fits(bytes_needed: int, device: torch.device) -> tuple[bool, str]:
    """Whether bytes_needed (plus 4 GiB of working room) fit in this GPU's free memory, on every rank."""
    if device.type != "cuda":
        return True, ""
    torch.cuda.empty_cache()
    free = torch.cuda.mem_get_info()[0]
    enough = bytes_needed + 4 * GiB <= free
    if dist.is_initialized():
        flag = torch.tensor([0 if enough else 1], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        enough = flag.item() == 0
    return enough, f"does not fit: needs {bytes_needed / GiB:.0f} GiB + 4, {free / GiB:.0f} GiB free"


def time_attention(sizes: Sizes, tps: list, device: torch.device, bandwidth: float, budget) -> list:
    rows = []
    element = 2 if device.type == "cuda" else 4
    clock = Clock(device)
    for name, whole in sizes.attention_specs.items():
        for tp in tps:
            spec = local_spec(whole, tp)
            for batch in sizes.batches:
                for capacity in sizes.caches:
                    row = dict(case=name, tp=tp, batch=batch, cache=capacity, spec=spec.key(),
                               cache_bytes_per_device=batch * capacity * spec.cache_elements_per_token * element)
                    rows.append(row)
                    ok, why = fits(row["cache_bytes_per_device"], device)
                    if not ok or budget.spent():
                        row["skipped"] = why if not ok else "time budget spent"
                        continue
                    inputs = attention_inputs(spec, batch, capacity, sizes.page_size, device)
                    shape = ProblemShape(batch=batch, query_len=1, capacity=capacity, page_size=sizes.page_size)
                    spec = spec.with_storage(dtype="bfloat16" if element == 2 else "float32")
                    row["spec"] = spec.key()
                    family = family_for_spec(spec, shape, device)
                    call = lambda inputs=inputs: glacompiler.attention_with_kvcache(**inputs)  # noqa: E731
                    if device.type == "cuda":
                        ms = clock.replayed(call, 10, calls_per_graph=10)
                    else:
                        ms = clock.per_call(call, 3)
                    floor_ms = attention_bytes(spec, batch, capacity, element) / bandwidth * 1e3
                    row.update(kernel=family.name if family else "PyTorch (CPU)", us=ms * 1e3,
                               floor_us=floor_ms * 1e3, of_floor=floor_ms / ms,
                               gbps=attention_bytes(spec, batch, capacity, element) / (ms * 1e-3) / 1e9)
                    del inputs
                    say(f"  attention {name} TP{tp} B{batch} S{capacity}: {ms * 1e3:.0f} us/device, "
                        f"{row['of_floor']:.2f} of the floor ({row['kernel']})")
    return rows


# ---- 3: the decoder stack --------------------------------------------------------------------------------------


class DecoderStack(nn.Module):
    """n_layers decoder layers with a static cache each: the model without embedding and head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.n_layers))
        self.caches: Optional[nn.ModuleList] = None
        self.layer_decode = None  # a compiled DecoderLayer.decode, shared by the layers

    def setup_cache(self, batch: int, capacity: int) -> None:
        self.caches = None
        self.caches = nn.ModuleList(layer.attention.new_cache(batch, capacity) for layer in self.layers)

    @torch.no_grad()
    def decode(self, x: torch.Tensor, cache_seqlens: torch.Tensor) -> torch.Tensor:
        layer_decode = self.layer_decode or DecoderLayer.decode
        for layer, cache in zip(self.layers, self.caches):
            x = layer_decode(layer, x, cache, cache_seqlens)
        return x


def stack_config(variant: str, sizes: Sizes) -> ModelConfig:
    rope = sizes.rope_dim if variant.startswith(("mla", "gla", "gta")) else None
    attention = attention_config(variant, sizes.d_model, sizes.n_heads, sizes.head_dim, rope_dim=rope)
    return ModelConfig(attention=attention, n_layers=sizes.n_layers, vocab_size=1, ffn_dim=sizes.ffn_dim)


def build_stack(config: ModelConfig, tp: int, mesh, device: torch.device, dtype: torch.dtype) -> DecoderStack:
    torch.manual_seed(0)
    with torch.device(device):
        stack = DecoderStack(config).eval().to(dtype)
    if tp > 1:
        for layer in stack.layers:
            shard_decoder_layer(layer, mesh)
    return stack


def parameter_bytes(module: nn.Module) -> int:
    return sum(p.to_local().nbytes if hasattr(p, "to_local") else p.nbytes for p in module.parameters())


def attention_alone_in_layer(stack: DecoderStack, batch: int, device: torch.device, dtype: torch.dtype,
                             clock: Clock) -> float:
    """Milliseconds of the fused op on layer 0's own cache (the per-rank heads), by graph replay on a GPU."""
    local = stack.layers[0].attention.config
    spec = local.cache_spec()
    cache = stack.caches[0]
    q_width = spec.head_dim_q
    q = torch.randn(batch, 1, local.n_heads, q_width, device=device, dtype=dtype)
    q_rope = torch.randn(batch, 1, local.n_heads, spec.rope_dim, device=device, dtype=dtype) if cache.k_rope_cache is not None else None
    lengths = torch.full((batch,), cache.max_seq_len, dtype=torch.int32, device=device)

    def call():
        return glacompiler.attention_with_kvcache(q, cache.k_cache, cache.v_cache, q_rope=q_rope,
                                                  k_rope_cache=cache.k_rope_cache, cache_seqlens=lengths,
                                                  softmax_scale=local.softmax_scale)

    return clock.replayed(call, 10, calls_per_graph=10) if device.type == "cuda" else clock.per_call(call, 3)


def time_stack(sizes: Sizes, tps: list, mesh, device: torch.device, bandwidth: float, graphs: bool,
               all_reduce: dict, budget) -> list:
    rows = []
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    element = dtype.itemsize
    clock = Clock(device)
    steps = 20 if cuda else 2
    for variant in sizes.stack_variants:
        config = stack_config(variant, sizes)
        for tp in tps:
            stack = build_stack(config, tp, mesh, device, dtype)
            weights = parameter_bytes(stack)
            local = stack.layers[0].attention.config
            for batch in sizes.batches:
                for capacity in sizes.caches:
                    cache_bytes = (sizes.n_layers * batch * capacity * local.cache_spec().cache_elements_per_token
                                   * element)
                    row = dict(model=variant, tp=tp, batch=batch, cache=capacity, cache_bytes_per_device=cache_bytes,
                               weight_bytes_per_device=weights)
                    rows.append(row)
                    ok, why = fits(cache_bytes, device)
                    if not ok or budget.spent():
                        row["skipped"] = why if not ok else "time budget spent"
                        continue
                    stack.setup_cache(batch, capacity)
                    assert cache_bytes_per_device(stack.caches) == cache_bytes
                    x = torch.randn(batch, 1, sizes.d_model, device=device, dtype=dtype)
                    lengths = torch.full((batch,), capacity, dtype=torch.int32, device=device)  # the whole cache
                    step = lambda: stack.decode(x, lengths)  # noqa: E731
                    stack.layer_decode = None
                    row["eager_ms"] = clock.per_call(step, steps)
                    row["eager_graph_ms"] = clock.replayed(step, steps) if graphs else math.nan
                    row["attention_ms_per_device"] = sizes.n_layers * attention_alone_in_layer(
                        stack, batch, device, dtype, clock)
                    ar_eager, ar_graph = all_reduce.get(batch, (0.0, 0.0)) if tp > 1 else (0.0, 0.0)
                    row["all_reduce_ms_per_step"] = 2 * sizes.n_layers * (ar_graph if graphs and cuda else ar_eager)
                    if tp > 1 and (batch, capacity) in sizes.compiled:
                        time_compiled(stack, step, row, clock, steps, graphs, budget)
                    timed = [row.get(k, math.nan) for k in ("eager_ms", "eager_graph_ms", "gla_ms", "gla_graph_ms")]
                    best = min(v for v in timed if not math.isnan(v))
                    row["best_ms"] = best
                    row["tokens_per_s"] = batch / (best * 1e-3)
                    row["floor_ms"] = (cache_bytes + weights) / bandwidth * 1e3
                    row["of_floor"] = row["floor_ms"] / best
                    compiled = ""
                    if "gla_ms" in row:
                        compiled = (f", gla {row['gla_ms']:.2f} ms, gla graph {row['gla_graph_ms']:.2f} ms "
                                    f"(compile {row['compile_s']:.0f} s, rewritten sites {row['rewritten_sites']}, "
                                    f"max relative difference to eager {row['compiled_vs_eager']:.1e})")
                    say(f"  stack {variant} TP{tp} B{batch} S{capacity}: eager {row['eager_ms']:.2f} ms, "
                        f"graph {row['eager_graph_ms']:.2f} ms{compiled}; attention "
                        f"{row['attention_ms_per_device']:.2f} ms/device")
                    stack.caches = None
            stack = None  # free this model before the next is built
            if cuda:
                torch.cuda.empty_cache()
    return rows


def time_compiled(stack: DecoderStack, step: Callable, row: dict, clock: Clock, steps: int, graphs: bool,
                  budget) -> None:
    """Decode attention written in plain PyTorch (glacompiler.demo's, as a user model writes it) and the layer
    decode compiled with backend="gla": the pass must rewrite it into the fused op on the per-rank shapes. One
    compile serves the 8 layers (rewritten_sites 1). Timed plain and captured in a CUDA graph."""
    if budget.spent():
        row["compiled_skipped"] = "time budget spent"
        return
    expected = step().float()  # the eager fused-op step (rewriting the same slots again is harmless)
    install_plain_decode(stack)
    torch._dynamo.reset()
    glacompiler.reset_report()
    # No C++ wrapper: it cuts host time per step but costs compile time, and the graph-captured column has no
    # host time to cut.
    backend = gla_backend(cpp_wrapper=False)
    stack.layer_decode = torch.compile(DecoderLayer.decode, backend=backend, dynamic=False)
    start = time.perf_counter()
    compiled = step().float()
    row["compile_s"] = time.perf_counter() - start
    row["compiled_vs_eager"] = slowest_rank(((compiled - expected).abs().max() / expected.abs().max()).item(),
                                            compiled.device)
    row["gla_ms"] = clock.per_call(step, steps)
    row["gla_graph_ms"] = clock.replayed(step, steps) if graphs else math.nan
    # One rewritten site: the 8 layers reused one compiled graph (a recompile per layer would show 8; 0: the
    # pass left the attention to Inductor, and the figures are not the fused op's).
    row["rewritten_sites"] = sum(1 for r in glacompiler.compile_report() if r.status == "rewritten")
    stack.layer_decode = None
    for layer in stack.layers:
        del layer.attention.decode  # back to the module's own decode (the fused op, called eagerly)


# ---- the run ---------------------------------------------------------------------------------------------------


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.perf_counter() + seconds

    def spent(self) -> bool:
        over = time.perf_counter() > self.deadline
        if dist.is_initialized() and dist.get_world_size() > 1:  # every rank must take the same branch
            flag = torch.tensor([1 if over else 0], device=_DEVICE[0])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            over = bool(flag.item())
        return over


_DEVICE = [torch.device("cpu")]
_RANK = [0]


def say(text: str) -> None:
    if _RANK[0] == 0:
        print(text, flush=True)


def fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_all_reduce(all_reduce: dict) -> None:
    say("\n### All-reduce of a [B, d_model] bf16 activation (two per decoder layer at TP 2)\n")
    say("| batch | eager us | graph-replayed us |\n|---|---|---|")
    for batch, (eager, graph) in all_reduce.items():
        say(f"| {batch} | {fmt(eager * 1e3, '.1f')} | {fmt(graph * 1e3, '.1f')} |")


def print_tables(attention_rows: list, stack_rows: list, all_reduce: dict) -> None:
    print_all_reduce(all_reduce)
    say("\n### Attention alone (per-rank layout, kernel time by CUDA-graph replay)\n")
    say("| case | TP | batch | cache | per-rank spec | kernel | us/device | cache MiB/device | GB/s | floor us | "
        "of floor |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for r in attention_rows:
        head = f"| {r['case']} | {r['tp']} | {r['batch']} | {r['cache']} | {r['spec']} |"
        if "skipped" in r:
            say(f"{head} {r['skipped']} | | {r['cache_bytes_per_device'] / 2**20:.0f} | | | |")
            continue
        say(f"{head} {r['kernel']} | {r['us']:.0f} | {r['cache_bytes_per_device'] / 2**20:.0f} | {r['gbps']:.0f} | "
            f"{r['floor_us']:.0f} | {r['of_floor']:.2f} |")
    say("\n### Decoder stack, per decode step (ms; the slowest rank)\n")
    say("| model | TP | batch | cache | cache GiB/device | weights GiB/device | eager | eager graph | gla | gla graph | "
        "tokens/s (best) | attention/device | all-reduce/step | of floor |")
    say("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in stack_rows:
        head = (f"| {r['model']} | {r['tp']} | {r['batch']} | {r['cache']} | {r['cache_bytes_per_device'] / GiB:.1f} | "
                f"{r['weight_bytes_per_device'] / GiB:.2f} |")
        if "skipped" in r:
            say(f"{head} {r['skipped']} | | | | | | | |")
            continue
        say(f"{head} {fmt(r['eager_ms'])} | {fmt(r['eager_graph_ms'])} | {fmt(r.get('gla_ms'))} | "
            f"{fmt(r.get('gla_graph_ms'))} | {r['tokens_per_s']:.0f} | {fmt(r['attention_ms_per_device'])} | "
            f"{fmt(r['all_reduce_ms_per_step'])} | {r['of_floor']:.2f} |")
    print_ratios(attention_rows, stack_rows)


def print_ratios(attention_rows: list, stack_rows: list) -> None:
    """The issue's goals, each a ratio within this run: GLA-2 over MLA at TP 2."""
    def index(rows, name_key):
        return {(r[name_key], r["tp"], r["batch"], r["cache"]): r for r in rows if "skipped" not in r}

    attention, stack = index(attention_rows, "case"), index(stack_rows, "model")
    say("\n### GLA-2 against MLA at TP 2 (same run)\n")
    say("| batch | cache | attention GLA-2/MLA (goal <= 0.6) | step GLA-2/MLA (goal <= 0.75 at 128K, B 8 and 32) | "
        "attention saved per layer us | all-reduces per layer us |\n|---|---|---|---|---|---|")
    for (name, tp, batch, cache), gla in sorted(attention.items(), key=lambda kv: (kv[0][2], kv[0][3])):
        mla = attention.get(("mla", tp, batch, cache))
        if name != "gla2" or tp != 2 or mla is None:
            continue
        step_gla, step_mla = stack.get(("gla-2", 2, batch, cache)), stack.get(("mla", 2, batch, cache))
        step_ratio = step_gla["best_ms"] / step_mla["best_ms"] if step_gla and step_mla else math.nan
        saved = per_layer_ar = math.nan
        if step_gla and step_mla:
            layers = len_layers(step_gla)
            saved = (step_mla["attention_ms_per_device"] - step_gla["attention_ms_per_device"]) / layers * 1e3
            per_layer_ar = step_gla["all_reduce_ms_per_step"] / layers * 1e3
        say(f"| {batch} | {cache} | {gla['us'] / mla['us']:.2f} | {fmt(step_ratio)} | {fmt(saved, '.0f')} | "
            f"{fmt(per_layer_ar, '.0f')} |")


def len_layers(row: dict) -> int:
    return row.get("n_layers", 8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batch 8 and 32 at 128K only, no compiled cells")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes, for CPU (gloo) smoke tests")
    parser.add_argument("--no-graphs", action="store_true", help="skip every CUDA-graph capture")
    parser.add_argument("--capture-only", action="store_true",
                        help="only the CUDA-graph capture check and the all-reduce timings (a minute), then stop")
    parser.add_argument("--capture-timeout", type=float, default=120.0,
                        help="seconds the first capture of all-reduces may take before the run is stopped")
    parser.add_argument("--budget-s", type=float, default=400.0, help="wall-clock budget; later cells are skipped")
    parser.add_argument("--parts", default="attention,stack", help="which of attention,stack to run")
    parser.add_argument("--json", help="also write the results here (rank 0)")
    args = parser.parse_args()
    for part in args.parts.split(","):
        if part not in ("attention", "stack"):
            parser.error(f"--parts: unknown part {part!r} (attention, stack)")
    if args.budget_s <= 0 or args.capture_timeout <= 0:
        parser.error("--budget-s and --capture-timeout must be positive")

    if not args.tiny and not torch.cuda.is_available():  # (the paper's sizes on CPU exhaust its memory, not a test)
        parser.error("the paper's sizes need CUDA GPUs, one per process; without one, --tiny runs tiny sizes on gloo")
    device_type = "cpu" if args.tiny else "cuda"  # (past the check above, a run without --tiny has a GPU)
    mesh = init_tensor_parallel(device=device_type)
    device = torch.device("cuda", torch.cuda.current_device()) if device_type == "cuda" else torch.device("cpu")
    _DEVICE[0], _RANK[0] = device, dist.get_rank()
    world = dist.get_world_size()
    tps = sorted({1, world})
    sizes = tiny_sizes() if args.tiny else paper_sizes(args.quick)
    if args.quick and not args.tiny:
        sizes = dataclasses.replace(sizes, batches=(8, 32), caches=(131072,))
    budget = Budget(args.budget_s)
    graphs = device.type == "cuda" and not args.no_graphs
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    say(f"# bench_tp: {world} x {name}, torch {torch.__version__}, backend {dist.get_backend()}, TP {tps}, "
        f"NCCL_NVLS_ENABLE={os.environ.get('NCCL_NVLS_ENABLE')}")
    if graphs and world > 1:
        graphs = check_capture(mesh, sizes, device, args.capture_timeout)
    bandwidth = copy_bandwidth(device)
    say(f"# copy bandwidth {bandwidth / 1e9:.0f} GB/s per device")
    all_reduce = {}
    if world > 1:
        for batch in sizes.batches:
            all_reduce[batch] = all_reduce_ms(mesh, batch, sizes.d_model, device, graphs)
    if args.capture_only:
        print_all_reduce(all_reduce)
        dist.destroy_process_group()
        return 0
    attention_rows = time_attention(sizes, tps, device, bandwidth, budget) if "attention" in args.parts else []
    stack_rows = (time_stack(sizes, tps, mesh, device, bandwidth, graphs, all_reduce, budget)
                  if "stack" in args.parts else [])
    for row in stack_rows:
        row["n_layers"] = sizes.n_layers
    print_tables(attention_rows, stack_rows, all_reduce)
    if args.json and _RANK[0] == 0:
        with open(args.json, "w") as handle:
            json.dump(dict(device=name, world=world, torch=torch.__version__, bandwidth=bandwidth,
                           all_reduce_ms={str(b): v for b, v in all_reduce.items()}, attention=attention_rows,
                           stack=stack_rows, sizes=dataclasses.asdict(sizes) | {"attention_specs": {
                               k: v.key() for k, v in sizes.attention_specs.items()}}), handle, indent=1)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

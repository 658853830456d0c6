"""`glacompiler demo`: the main job end to end on a built-in GLA-2 model.

The model's decode attention is written the way a user writes it, in plain PyTorch over a static cache
(install_plain_decode below; the package's reference modules call the fused op directly, which would leave
the backend nothing to do). The demo compiles prefill and decode with backend="gla", decodes greedily, checks
the logits against eager PyTorch, prints the compile report and, on a GPU, tokens/s beside torch.compile's
default backend and eager. On CPU it uses a tiny model: under a minute the first time (Inductor compiles), seconds
after that.

With --tp N, under `torchrun --nproc-per-node N -m glacompiler demo --tp N`, every layer is sharded over N
processes (glacompiler.parallel: NCCL on GPUs, gloo on CPU); each rank compiles its share of the heads, and
the logits are checked against the unsharded model run eagerly on each rank. Rank 0 prints."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import faulthandler
import io
import os
import time
import types
from typing import Callable, Optional

import torch

from .compiler import backend as gla_backend_factory
from .compiler import compile_report, format_report, reset_report
from .models import ModelConfig, TinyLM
from .presets import PAPER_VARIANTS, paper_config, tiny_config
from .models.layers import decode_positions
from .kernels import family_for_spec
from .kernels.common.interpreter import triton_interpreter_enabled
from .spec import ProblemShape
from .usage import UsageError

# ---- decode attention in plain PyTorch, as a user model writes it ------------------------------------------


def visible_keys(cache_seqlens: torch.Tensor, query_len: int, capacity: int) -> torch.Tensor:
    """[B, 1, Lq, S] bool: new token i (at position cache_seqlens - Lq + i) sees the keys up to its position."""
    positions = cache_seqlens.to(torch.long)[:, None] - query_len + torch.arange(query_len, device=cache_seqlens.device)
    keys = torch.arange(capacity, device=cache_seqlens.device)
    return (keys[None, None, :] <= positions[:, :, None])[:, None]


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Hugging Face's repeat_kv: [B, Hkv, S, D] -> [B, Hkv * groups, S, D]."""
    batch, heads, length, dim = x.shape
    return x[:, :, None, :, :].expand(batch, heads, groups, length, dim).reshape(batch, heads * groups, length, dim)


def plain_grouped_decode(self, x, cache, cache_seqlens):
    """MHA/GQA/MQA: repeat_kv, matmul, masked softmax, matmul."""
    c = self.config
    batch, query_len, _ = x.shape
    positions = decode_positions(cache_seqlens, query_len)
    q, k, v = self._project(x, positions)
    cache.write(positions, k, v)
    groups = c.n_heads // c.n_kv_heads
    keys = repeat_kv(cache.k_cache.transpose(1, 2), groups)
    values = repeat_kv(cache.v_cache.transpose(1, 2), groups)
    scores = torch.matmul(q.transpose(1, 2), keys.transpose(2, 3)) * c.softmax_scale
    scores = scores.masked_fill(~visible_keys(cache_seqlens, query_len, keys.shape[2]), float("-inf"))
    out = torch.matmul(scores.softmax(dim=-1), values).transpose(1, 2)
    return self.o_proj(out.reshape(batch, query_len, -1))


def plain_tied_decode(self, x, cache, cache_seqlens):
    """GTA: K = cat(tied[..., :d_h - d_R], the shared rope key broadcast over heads), V = tied."""
    c = self.config
    batch, query_len, _ = x.shape
    positions = decode_positions(cache_seqlens, query_len)
    q_nope, q_rope, kv, k_rope = self._project(x, positions)
    cache.write(positions, kv, rope_keys=k_rope)
    tied = cache.k_cache
    shared = cache.k_rope_cache[:, :, None, :].expand(-1, -1, c.n_kv_heads, -1)
    keys = torch.cat([tied[..., : c.head_dim - c.rope_dim], shared], dim=-1)
    groups = c.n_heads // c.n_kv_heads
    q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)
    scores = q @ repeat_kv(keys.transpose(1, 2), groups).transpose(-1, -2) * c.softmax_scale
    scores = torch.where(visible_keys(cache_seqlens, query_len, tied.shape[1]), scores, float("-inf"))
    out = (scores.softmax(-1) @ repeat_kv(tied.transpose(1, 2), groups)).transpose(1, 2)
    return self.o_proj(out.reshape(batch, query_len, -1))


def plain_latent_decode(self, x, cache, cache_seqlens):
    """MLA/GLA, absorbed: q_lat . c + q_pe . k_pe over the cached latent heads, softmax, . c, then W_UV."""
    c = self.config
    batch, query_len, _ = x.shape
    q_latent, q_rope = self.absorbed_query(x, cache, cache_seqlens)
    heads, groups = c.n_latent_heads, c.n_heads // c.n_latent_heads
    q_latent = q_latent.view(batch, query_len, heads, groups, -1)
    q_rope = q_rope.view(batch, query_len, heads, groups, -1)
    scores = (torch.einsum("bljgc,bsjc->bjgls", q_latent, cache.k_cache)
              + torch.einsum("bljgr,bsr->bjgls", q_rope, cache.k_rope_cache)) * c.softmax_scale
    visible = visible_keys(cache_seqlens, query_len, cache.k_cache.shape[1])[:, :, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    out_latent = torch.einsum("bjgls,bsjc->bljgc", scores.softmax(-1), cache.k_cache)
    return self.output_from_latent(out_latent.reshape(batch, query_len, c.n_heads, -1))


PLAIN_DECODE = {"mha": plain_grouped_decode, "gqa": plain_grouped_decode, "mqa": plain_grouped_decode,
                "gta": plain_tied_decode, "mla": plain_latent_decode, "gla": plain_latent_decode}


def install_plain_decode(model: TinyLM) -> TinyLM:
    """Swap every layer's decode for the plain-PyTorch form of its kind."""
    for layer in model.layers:
        attention = layer.attention
        attention.decode = types.MethodType(PLAIN_DECODE[attention.config.kind], attention)
    return model


# ---- the model -----------------------------------------------------------------------------------------------


GPU_MODEL_SIZE = "xl"  # the paper's XL widths (16 heads of 128; GLA-2: two latent heads of 256 + rope 64)
CPU_QUERY_HEADS = tiny_config().attention.n_heads  # the CPU model's: gqa-N, gta-N and gla-N need N to divide it


def model_config(variant: str, n_layers: int, device: torch.device) -> ModelConfig:
    """The demo's model, with few layers: on a GPU one of the paper's, on CPU a tiny one."""
    if device.type == "cuda":
        return paper_config(GPU_MODEL_SIZE, variant, n_layers=n_layers, vocab_size=32000)
    return tiny_config(variant, n_layers=n_layers)


def build_model(config: ModelConfig, device: torch.device, dtype: torch.dtype, batch: int, capacity: int,
                mesh=None) -> TinyLM:
    """The demo's model with plain-PyTorch decode; with a DeviceMesh, sharded over it before its caches are made."""
    torch.manual_seed(0)
    model = TinyLM(config).eval().to(device=device, dtype=dtype)
    if mesh is not None:
        from .parallel import shard_model

        shard_model(model, mesh)
    model.setup_cache(batch, capacity)
    mark_caches_static(model)
    return install_plain_decode(model)


def mark_caches_static(model: TinyLM) -> None:
    """The caches keep their addresses for the model's life: CUDA graphs may read and write them in place
    (as Hugging Face marks its StaticCache)."""
    for cache in model.caches:
        for tensor in cache.tensors():
            torch._dynamo.mark_static_address(tensor)


def greedy_decode(model: TinyLM, prompt: torch.Tensor, steps: int, prefill: Callable, decode: Callable,
                  between_steps: Optional[Callable] = None) -> list:
    """Logits [B, 1, V] of each decode step after the prompt (the caches are refilled from scratch)."""
    for cache in model.caches:
        cache.fill_(0.0)
    logits = prefill(prompt)[:, -1:]
    lengths = torch.full((prompt.shape[0],), prompt.shape[1], dtype=torch.int32, device=prompt.device)
    outputs = []
    for _ in range(steps):
        lengths = lengths + 1
        if between_steps is not None:
            between_steps()
        logits = decode(logits.argmax(-1), lengths)
        outputs.append(logits.clone())
    return outputs


def decode_tokens_per_second(model: TinyLM, prompt: torch.Tensor, steps: int, prefill: Callable, decode: Callable,
                             between_steps: Optional[Callable] = None) -> float:
    """Decode steps only (after a prefill and a few warm-up steps that compile and capture)."""
    for cache in model.caches:
        cache.fill_(0.0)
    tokens = prefill(prompt)[:, -1:].argmax(-1)
    lengths = torch.full((prompt.shape[0],), prompt.shape[1], dtype=torch.int32, device=prompt.device)

    def step(lengths):
        if between_steps is not None:
            between_steps()
        return decode(tokens, lengths + 1)

    for _ in range(3):
        step(lengths)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for index in range(steps):
        step(lengths + index)  # the same cache slots are rewritten: only the lengths matter for the cost
    torch.cuda.synchronize()
    return prompt.shape[0] * steps / (time.perf_counter() - start)


# ---- the settings: what the flags ask for, checked before anything runs --------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclasses.dataclass(frozen=True)
class DeviceDefaults:
    """What the demo runs where a flag is left out: a quick check on CPU, a throughput-sized run on a GPU."""

    dtype: str
    batch: int
    steps: int
    capacity: int
    timing_steps: int


TP_HANG_TIMEOUT_S = 1200  # a sharded GPU demo takes a few minutes; far longer means a hung collective

CPU_DEFAULTS = DeviceDefaults(dtype="float32", batch=2, steps=8, capacity=64, timing_steps=0)
GPU_DEFAULTS = DeviceDefaults(dtype="bfloat16", batch=32, steps=64, capacity=4096, timing_steps=128)


@dataclasses.dataclass(frozen=True)
class DemoSettings:
    device: torch.device
    dtype: torch.dtype
    model: ModelConfig
    batch: int
    prompt_len: int
    steps: int
    capacity: int
    timing_steps: int  # decode steps timed per backend; 0 = no timing (CPU)
    tp: int = 1  # tensor-parallel ranks (processes started by torchrun)
    notes: tuple = ()  # flags given that do not apply on this device, said back to the user


def demo_device(requested: str) -> torch.device:
    return torch.device("cuda" if requested != "cpu" and torch.cuda.is_available() else "cpu")


def check_positive(args: argparse.Namespace) -> None:
    for flag, value in (("--layers", args.layers), ("--batch", args.batch), ("--prompt", args.prompt),
                        ("--steps", args.steps), ("--timing-steps", args.timing_steps),
                        ("--capacity", args.capacity), ("--tp", args.tp)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be a positive integer, got {value}")


def checked_model_config(variant: str, n_layers: int, device: torch.device) -> ModelConfig:
    try:
        return model_config(variant, n_layers, device)
    except ValueError as error:
        # On a GPU the error lists the paper's variants; on CPU the limit is the tiny model's query heads.
        limit = "" if device.type == "cuda" else (f" (the CPU model has {CPU_QUERY_HEADS} query heads: "
                                                  f"N must divide {CPU_QUERY_HEADS})")
        raise UsageError(f"--variant {variant}: {error}{limit}") from None


def launched_processes() -> int:
    """How many processes torchrun started (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def checked_tensor_parallel(tp: int, model: ModelConfig, device: torch.device) -> int:
    """--tp N needs N processes (torchrun), N devices on a GPU machine, and heads that split N ways."""
    from .parallel import local_attention_config

    processes = launched_processes()
    if tp > 1 and processes == 1:
        raise UsageError(f"--tp {tp} needs {tp} processes: start it with torchrun --nproc-per-node {tp} -m "
                         f"glacompiler demo --tp {tp}")
    if tp != processes:
        raise UsageError(f"--tp {tp} but torchrun started {processes} processes: give --tp {processes}")
    if tp > 1 and device.type == "cuda" and torch.cuda.device_count() < tp:
        raise UsageError(f"--tp {tp} needs {tp} GPUs; {torch.cuda.device_count()} are visible")
    try:
        local_attention_config(model.attention, tp)
    except ValueError as error:
        raise UsageError(f"--tp {tp} with --variant {model.attention.kind}: {error}") from None
    if model.ffn_dim % tp:
        raise UsageError(f"--tp {tp}: the MLP width {model.ffn_dim} does not split over {tp} ranks")
    return tp


def cache_capacity(requested: Optional[int], default: int, prompt_len: int, steps: int, timing_steps: int) -> int:
    """The static cache holds the prompt and every token decoded after it. Left out, the default grows to fit
    them; given, it must fit them (the prompt is never cut to make room)."""
    steps_flag, decoded = ("--timing-steps", timing_steps) if timing_steps > steps else ("--steps", steps)
    needed = prompt_len + decoded
    if requested is None:
        return max(default, needed)
    if requested < needed:
        raise UsageError(f"--capacity {requested} cannot hold the {prompt_len}-token prompt and the {decoded} tokens "
                         f"decoded after it ({steps_flag} {decoded}): give --capacity {needed} or more, or a shorter "
                         f"--prompt or fewer {steps_flag}")
    return requested


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """The run the flags ask for, with the device's defaults where a flag is left out; a UsageError naming
    the flag for a request the demo cannot honour as given."""
    check_positive(args)
    device = demo_device(args.device)
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    model = checked_model_config(args.variant, args.layers, device)
    tp = checked_tensor_parallel(args.tp, model, device)
    steps = args.steps if args.steps is not None else defaults.steps
    timing_steps, notes = defaults.timing_steps, ()
    if device.type == "cuda" and args.timing_steps is not None:
        timing_steps = args.timing_steps
    elif args.timing_steps is not None:
        notes = (f"--timing-steps {args.timing_steps} not used: throughput is timed on a GPU only",)
    capacity = cache_capacity(args.capacity, defaults.capacity, args.prompt, steps, timing_steps)
    return DemoSettings(device=device, dtype=DTYPES[args.dtype or defaults.dtype], model=model,
                        batch=args.batch if args.batch is not None else defaults.batch, prompt_len=args.prompt,
                        steps=steps, capacity=capacity, timing_steps=timing_steps, tp=tp, notes=notes)


def execution_path(device: torch.device, spec=None, shape: Optional[ProblemShape] = None) -> str:
    """What runs the fused attention op here: PyTorch's CPU attention, or a kernel family, on the GPU or
    under the Triton interpreter (CPU with TRITON_INTERPRET=1); with the spec and shape of the model's decode
    attention, the family the op picks for them (kernels.family_for_spec, what the op's registry decides)."""
    if device.type != "cuda" and not triton_interpreter_enabled():
        return ("PyTorch's CPU attention (set TRITON_INTERPRET=1, with numpy installed, to run the Triton kernels in "
                "the interpreter)")
    family = family_for_spec(spec, shape, device) if spec is not None else None
    kernels = f"the {family.name} kernels" if family is not None else "the generated kernels"
    if device.type == "cuda":
        return f"GPU: {kernels} on {torch.cuda.get_device_name(device)}"
    return f"Triton interpreter (CPU, TRITON_INTERPRET=1): {kernels}, interpreted"


# ---- the demo ------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings.tp == 1:
        return run_settings(args, settings)
    import torch.distributed as dist

    from .parallel import init_tensor_parallel

    mesh = init_tensor_parallel(settings.tp, device=settings.device.type)
    if settings.device.type == "cuda":
        # A collective that hangs (inside a CUDA-graph capture, say) cannot be interrupted: end the rank with
        # the traceback of where it hung; torchrun then stops the others.
        faulthandler.dump_traceback_later(TP_HANG_TIMEOUT_S, exit=True)
    try:
        # Every rank runs and checks the same steps (the collectives need them all); rank 0 prints.
        quiet = contextlib.redirect_stdout(io.StringIO()) if mesh.get_rank() else contextlib.nullcontext()
        with quiet:
            status = run_settings(args, settings, mesh)
        failed = torch.tensor([status], device=settings.device if settings.device.type == "cuda" else "cpu")
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        return int(failed.item())
    finally:
        faulthandler.cancel_dump_traceback_later()
        dist.destroy_process_group()


def run_settings(args: argparse.Namespace, settings: DemoSettings, mesh=None) -> int:
    cuda = settings.device.type == "cuda"
    device, dtype, batch, steps = settings.device, settings.dtype, settings.batch, settings.steps
    model = build_model(settings.model, device, dtype, batch, settings.capacity, mesh)
    # Sharded, the logits are checked against the whole model on each rank, run eagerly.
    reference = model if mesh is None else build_model(settings.model, device, dtype, batch, settings.capacity)
    prompt = torch.randint(0, model.config.vocab_size, (batch, settings.prompt_len), device=device,
                           generator=torch.Generator(device=device).manual_seed(1))
    kind = model.config.attention.kind
    print(f"glacompiler demo: {args.variant} ({kind}), {args.layers} layers, batch {batch}, "
          f"prompt {settings.prompt_len}, cache {settings.capacity}, {steps} decode steps, "
          f"{str(dtype).replace('torch.', '')} on {device}")
    decode_shape = ProblemShape(batch=batch, query_len=1, capacity=settings.capacity, page_size=0)
    spec = model.layers[0].attention.config.cache_spec(str(dtype).replace("torch.", ""))  # per rank when sharded
    print(f"decode attention runs on: {execution_path(device, spec, decode_shape)}")
    if mesh is not None:
        from .parallel import cache_bytes_per_device

        backend_name = torch.distributed.get_backend()
        print(f"tensor parallel: {settings.tp} ranks ({backend_name}), {spec.num_q_heads} query heads and "
              f"{spec.num_kv_heads} KV/latent heads per rank; cache per device "
              f"{cache_bytes_per_device(model.caches) / 2**20:.2f} MiB (unsharded "
              f"{cache_bytes_per_device(reference.caches) / 2**20:.2f} MiB)")
    for note in settings.notes:
        print(f"note: {note}")

    with torch.no_grad():
        eager = greedy_decode(reference, prompt, steps, reference.prefill, reference.decode)
        torch._dynamo.reset()
        reset_report()
        backend = gla_backend_factory(cudagraphs=cuda)
        prefill = torch.compile(model.prefill, backend="gla")
        decode = torch.compile(model.decode, backend=backend)
        mark_step = torch.compiler.cudagraph_mark_step_begin if cuda else None
        compiled = greedy_decode(model, prompt, steps, prefill, decode, mark_step)

        worst = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                    for a, b in zip(compiled, eager))
        same_tokens = all(torch.equal(a.argmax(-1), b.argmax(-1)) for a, b in zip(compiled, eager))
        tolerance = 1e-4 if dtype == torch.float32 else 3e-2
        print("\ncompile report:")
        print(format_report(compile_report()))
        rewritten = sum(r.status == "rewritten" for r in compile_report())
        versus = "the unsharded model run eagerly" if mesh is not None else "eager"
        print(f"\nattention sites rewritten: {rewritten}; logits vs {versus}: max relative difference {worst:.2e} "
              f"(tolerance {tolerance:.0e}); greedy tokens {'identical' if same_tokens else 'differ'}")
        ok = worst <= tolerance and rewritten >= len(model.layers)

        if settings.timing_steps:
            timing_steps = settings.timing_steps
            rates = {
                'torch.compile(backend="gla", cudagraphs)': decode_tokens_per_second(
                    model, prompt, timing_steps, prefill, decode, mark_step),
                'torch.compile(mode="reduce-overhead")': decode_tokens_per_second(
                    model, prompt, timing_steps, prefill, torch.compile(model.decode, mode="reduce-overhead"),
                    mark_step),
                "eager": decode_tokens_per_second(model, prompt, timing_steps, model.prefill, model.decode),
            }
            print(f"\ndecode throughput on {torch.cuda.get_device_name()} (tokens/s, batch {batch}):")
            for name, rate in rates.items():
                print(f"  {name:<46} {rate:12.1f}")
    print("\nOK" if ok else "\nFAILED: the compiled model does not match eager or attention was not rewritten")
    return 0 if ok else 1


def register(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="compile a GLA-2 model with backend='gla', decode, check, report",
                                   description=__doc__)
    parser.add_argument("--variant", type=str.lower, default="gla-2",
                        help=f"attention variant: mha, mqa, mla, gqa-N, gta-N, gla-N (CPU: N divides "
                             f"{CPU_QUERY_HEADS}; GPU: the paper's {GPU_MODEL_SIZE.upper()} models "
                             f"{', '.join(sorted(PAPER_VARIANTS[GPU_MODEL_SIZE]))})")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=None,
                        help=f"default {CPU_DEFAULTS.batch} on CPU, {GPU_DEFAULTS.batch} on a GPU")
    parser.add_argument("--prompt", type=int, default=24, help="prompt tokens (over 16: prefill is left to Inductor)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"decode steps checked against eager; default {CPU_DEFAULTS.steps} on CPU, "
                             f"{GPU_DEFAULTS.steps} on a GPU")
    parser.add_argument("--timing-steps", type=int, default=None,
                        help=f"decode steps timed (GPU only); default {GPU_DEFAULTS.timing_steps}")
    parser.add_argument("--capacity", type=int, default=None,
                        help=f"static cache length, at least prompt + decode steps; default {CPU_DEFAULTS.capacity} "
                             f"on CPU, {GPU_DEFAULTS.capacity} on a GPU (grown to fit the prompt and steps)")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None,
                        help="default float32 on CPU, bfloat16 on a GPU")
    parser.add_argument("--tp", type=int, default=1,
                        help="tensor-parallel ranks: run under torchrun --nproc-per-node N -m glacompiler demo --tp N "
                             "(NCCL on GPUs, gloo on CPU)")
    parser.set_defaults(handler=run)

"""`glacompiler demo`: the main job end to end on a built-in GLA-2 model.

The model's decode attention is written the way a user writes it, in plain PyTorch over a static cache
(install_plain_decode below; the package's reference modules call the fused op directly, which would leave
the backend nothing to do). The demo compiles prefill and decode with backend="gla", decodes greedily, checks
the logits against eager PyTorch, prints the compile report and, on a GPU, tokens/s beside torch.compile's
default backend and eager. On CPU it uses a tiny model and finishes in about a minute."""
from __future__ import annotations

import argparse
import time
import types
from typing import Callable, Optional

import torch

from .compiler import backend as gla_backend_factory
from .compiler import compile_report, format_report, reset_report
from .models import TinyLM
from .presets import paper_config, tiny_config
from .models.layers import decode_positions

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


# ---- the demo ------------------------------------------------------------------------------------------------


def build_model(variant: str, n_layers: int, device: torch.device, dtype: torch.dtype, batch: int,
                capacity: int) -> TinyLM:
    torch.manual_seed(0)
    if device.type == "cuda":
        # The paper's XL widths (16 heads of 128; GLA-2: two latent heads of 256 + rope 64), few layers.
        config = paper_config("xl", variant, n_layers=n_layers, vocab_size=32000)
    else:
        config = tiny_config(variant, n_layers=n_layers)
    model = TinyLM(config).eval().to(device=device, dtype=dtype)
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


def run(args: argparse.Namespace) -> int:
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        args.dtype or ("bfloat16" if cuda else "float32")]
    batch = args.batch or (32 if cuda else 2)
    steps = args.steps or (64 if cuda else 8)
    capacity = args.capacity or (4096 if cuda else 64)
    prompt_len = min(args.prompt, capacity - steps - 1)
    model = build_model(args.variant, args.layers, device, dtype, batch, capacity)
    prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device=device,
                           generator=torch.Generator(device=device).manual_seed(1))
    kind = model.config.attention.kind
    print(f"glacompiler demo: {args.variant} ({kind}), {args.layers} layers, batch {batch}, prompt {prompt_len}, "
          f"cache {capacity}, {steps} decode steps, {str(dtype).replace('torch.', '')} on {device}")

    with torch.no_grad():
        eager = greedy_decode(model, prompt, steps, model.prefill, model.decode)
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
        print(f"\nattention sites rewritten: {rewritten}; logits vs eager: max relative difference {worst:.2e} "
              f"(tolerance {tolerance:.0e}); greedy tokens {'identical' if same_tokens else 'differ'}")
        ok = worst <= tolerance and rewritten >= len(model.layers)

        if cuda:
            timing_steps = args.timing_steps
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
    parser.add_argument("--variant", default="gla-2", help="attention variant (mha, mqa, gqa-N, gta-N, mla, gla-N)")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=None, help="default 2 on CPU, 32 on a GPU")
    parser.add_argument("--prompt", type=int, default=24, help="prompt tokens (over 16: prefill is left to Inductor)")
    parser.add_argument("--steps", type=int, default=None, help="decode steps checked against eager")
    parser.add_argument("--timing-steps", type=int, default=128, help="decode steps timed (GPU only)")
    parser.add_argument("--capacity", type=int, default=None, help="static cache length")
    parser.add_argument("--device", choices=("auto", "cpu"), default="auto")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None)
    parser.set_defaults(handler=run)

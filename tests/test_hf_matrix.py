"""transformers models as users run them (issue 12, section 2): tiny random configs (no download), fp32, one or
two layers. With a StaticCache: a prefill (longer than the op's 16 query tokens: left to Inductor) and
greedy decode steps; every decode site is rewritten and the logits equal eager. With model.generate() on its
default dynamic cache: the same greedy tokens as eager and no recompile per step after warm-up.

The StaticCache matrix runs our pass on the ATen graphs (AOT with Inductor's decompositions, as the backend
sees them) and executes the rewritten graphs eagerly, which keeps each model to a few seconds; the generate()
tests and tests/test_backend_hf.py run the whole backend. The GPU test runs the fused paths at bf16 under
backend="gla" and holds them to FlashAttention's rule against an fp32 eager run."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch._dynamo

import glacompiler
from test_backend_support import RecordingPass, assert_close

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # whole models

BATCH, PROMPT, CAPACITY, DECODE_STEPS, VOCAB = 2, 18, 32, 6, 64
COMMON = dict(vocab_size=VOCAB, max_position_embeddings=64, attn_implementation="sdpa")
LLAMA_LIKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                  num_key_value_heads=2, **COMMON)

# name: (config class, config arguments, model class, kind of its decode attention)
# Falcon cached K/V broadcast to all heads (MHA to the pass) until transformers 5.25, whose Falcon caches the KV heads
# and repeats them in its attention, as Llama does (GQA).
FALCON_KIND = "gqa" if hasattr(transformers.models.falcon.modeling_falcon, "repeat_kv") else "mha"
MODELS = {
    "llama": ("LlamaConfig", dict(LLAMA_LIKE, head_dim=8), "LlamaForCausalLM", "gqa"),
    "mistral": ("MistralConfig", dict(LLAMA_LIKE, head_dim=8, sliding_window=None), "MistralForCausalLM", "gqa"),
    "qwen2": ("Qwen2Config", dict(LLAMA_LIKE), "Qwen2ForCausalLM", "gqa"),
    "qwen3": ("Qwen3Config", dict(LLAMA_LIKE, head_dim=8), "Qwen3ForCausalLM", "gqa"),
    "gemma3": ("Gemma3TextConfig", dict(LLAMA_LIKE, head_dim=8, sliding_window=64, layer_types=["full_attention"],
                                        query_pre_attn_scalar=8), "Gemma3ForCausalLM", "gqa"),
    "phi3": ("Phi3Config", dict(LLAMA_LIKE, pad_token_id=0), "Phi3ForCausalLM", "gqa"),
    "gpt2": ("GPT2Config", dict(n_embd=32, n_layer=1, n_head=4, n_positions=64, vocab_size=VOCAB,
                                attn_implementation="sdpa"), "GPT2LMHeadModel", "mha"),
    "opt": ("OPTConfig", dict(hidden_size=32, ffn_dim=64, num_hidden_layers=1, num_attention_heads=4,
                              word_embed_proj_dim=32, **COMMON), "OPTForCausalLM", "mha"),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, **COMMON), "GPTNeoXForCausalLM", "mha"),
    "gptj": ("GPTJConfig", dict(n_embd=32, n_layer=1, n_head=4, rotary_dim=4, n_positions=64, vocab_size=VOCAB,
                                attn_implementation="eager"), "GPTJForCausalLM", "mha"),
    "falcon": ("FalconConfig", dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, new_decoder_architecture=True,
                                    num_kv_heads=2, **COMMON), "FalconForCausalLM", FALCON_KIND),
    "olmo2": ("Olmo2Config", dict(LLAMA_LIKE), "Olmo2ForCausalLM", "gqa"),
    "cohere": ("CohereConfig", dict(LLAMA_LIKE), "CohereForCausalLM", "gqa"),
    "granite": ("GraniteConfig", dict(LLAMA_LIKE), "GraniteForCausalLM", "gqa"),
}


# Decode masks the pass proves allow a prefix of the keys reach the op as lengths (compiler/trace/key_prefix.py);
# OPT's arrives as an input of the decode graph (built before a graph break), which the pass cannot see into.
MASK_STAYS_A_MASK = {"opt": "boolean"}  # model -> how its mask reaches the op (the report's mask column)


def build(name: str, dtype=torch.float32, device="cpu"):
    config_name, arguments, model_name, kind = MODELS[name]
    config = getattr(transformers, config_name)(**arguments)
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval().to(device=device, dtype=dtype)
    return model, config, kind


def make_cache(model, config):
    parameters = inspect.signature(transformers.StaticCache.__init__).parameters
    kwargs = {"config": config, "max_cache_len": CAPACITY}
    if "max_batch_size" in parameters:  # transformers 4.x
        kwargs.update(max_batch_size=BATCH, dtype=model.dtype, device=model.device)
    return transformers.StaticCache(**kwargs)


def decode_logits(model, config, forward, tokens=None) -> list:
    """Logits of the prefill and of DECODE_STEPS greedy steps on a StaticCache (or of the steps that feed
    `tokens`, one [BATCH, 1] tensor per step)."""
    cache = make_cache(model, config)
    ids = torch.randint(0, VOCAB, (BATCH, PROMPT), generator=torch.Generator().manual_seed(1)).to(model.device)
    parameters = inspect.signature(model.forward).parameters

    def step(tokens, start):
        kwargs = {("cache" if "cache" in parameters else "past_key_values"): cache, "use_cache": True}  # (5.25 on)
        if "cache_position" in parameters:
            kwargs["cache_position"] = torch.arange(start, start + tokens.shape[1], device=model.device)
        return forward(input_ids=tokens, **kwargs).logits

    logits = [step(ids, 0)]
    for index in range(DECODE_STEPS):
        token = logits[-1][:, -1:].argmax(-1) if tokens is None else tokens[index]
        logits.append(step(token, PROMPT + index))
    return logits


@pytest.mark.parametrize("name", list(MODELS))
def test_static_cache_decode(name):
    model, config, kind = build(name)
    layers = config.num_hidden_layers
    torch._dynamo.reset()
    recording = RecordingPass()
    with torch.no_grad():
        ours = decode_logits(model, config, torch.compile(model.forward, backend=recording.backend()))
        eager = decode_logits(model, config, model.forward)
    for a, b in zip(ours, eager):
        assert_close(a, b, tol=1e-4)
    rewritten = [r for r in recording.records if r.status == "rewritten"]
    skipped = [r for r in recording.records if r.status == "skipped"]
    assert len(rewritten) == layers and {r.kind for r in rewritten} == {kind}, [str(r) for r in recording.records]
    assert {r.mask for r in rewritten} == {MASK_STAYS_A_MASK.get(name, "lengths")}
    assert len(skipped) == layers
    assert all("prefill" in r.reason for r in skipped), [str(r) for r in skipped]


def generate_tokens(model, forward=None, new_tokens=DECODE_STEPS + 2):
    ids = torch.randint(0, VOCAB, (BATCH, 5), generator=torch.Generator().manual_seed(2))
    if forward is not None:
        model.forward = forward
    try:
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
                              min_new_tokens=new_tokens, pad_token_id=0)
    finally:
        if forward is not None:
            del model.forward


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_generate_dynamic_cache(name):
    """generate() grows a DynamicCache by torch.cat: the key length changes every step, dynamo marks it
    dynamic after the first change, and from then on every step reuses the same compiled graph (with the
    decode site rewritten for a symbolic key length)."""
    model, config, kind = build(name)
    torch._dynamo.reset()
    recording = RecordingPass()
    with torch.no_grad():
        eager = generate_tokens(model)
        compiled = torch.compile(model.forward, backend=recording.backend())
        generate_tokens(model, compiled, new_tokens=4)
        graphs_after_warmup = recording.graphs
        ours = generate_tokens(model, compiled)
    assert torch.equal(ours, eager)
    assert recording.graphs == graphs_after_warmup, [str(r) for r in recording.records]
    decode = [r for r in recording.records if r.status == "rewritten"]
    assert decode and {r.kind for r in decode} == {kind}, [str(r) for r in recording.records]
    assert all("prefill" in r.reason for r in recording.records if r.status == "skipped"), [str(r) for r in recording.records]


@pytest.mark.gpu
@pytest.mark.parametrize("name", list(MODELS))
def test_static_cache_decode_bf16_gpu(name, cuda_device):
    """bf16 through the whole backend on a GPU; FlashAttention's rule on the decode logits: the error of ours
    against an fp32 eager run is at most twice (plus a small atol) that of bf16 eager."""
    reference_model, config, kind = build(name, torch.float32, cuda_device)
    model, _, _ = build(name, torch.bfloat16, cuda_device)
    torch._dynamo.reset()
    glacompiler.reset_report()
    with torch.no_grad():
        reference = decode_logits(reference_model, config, reference_model.forward)
        # bf16 may pick other greedy tokens: every run is fed the fp32 run's tokens.
        tokens = [logits[:, -1:].argmax(-1) for logits in reference[:-1]]
        eager = decode_logits(model, config, model.forward, tokens)
        ours = decode_logits(model, config, torch.compile(model.forward, backend="gla"), tokens)
    for step, (a, b, r) in enumerate(zip(ours, eager, reference)):
        ours_error = (a.float() - r).abs().max().item()
        eager_error = (b.float() - r).abs().max().item()
        assert ours_error <= 2 * eager_error + 1e-3 * r.abs().max().item(), (step, ours_error, eager_error)
    rewritten = [r for r in glacompiler.compile_report() if r.status == "rewritten"]
    assert len(rewritten) >= config.num_hidden_layers and {r.kind for r in rewritten} == {kind}
    # On CUDA SDPA may hand the mask on in its own form (torch 2.11's cuDNN: where(mask, 0, -65504)).
    assert {r.mask for r in rewritten} == {MASK_STAYS_A_MASK.get(name, "lengths")}, [str(r) for r in rewritten]

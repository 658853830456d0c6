"""transformers' models whose attention uses FlashAttention's extensions, tiny random configs (fp32, no
download), StaticCache, a 20-token prefill then 6 greedy steps under torch.compile(backend="gla"): BLOOM (ALiBi), GPT-OSS (attention sinks, sliding-window layers) and Gemma2 (soft
capping, sliding-window layers). Every decode site is rewritten with its extension and the logits equal eager.
The query projections are scaled up so that the scores reach the range where a dropped cap, sink or bias
would change the logits."""
import pytest
import torch

import glacompiler
from test_backend_hf import call, compiled_equals_eager, make_cache

pytestmark = pytest.mark.slow  # whole models

transformers = pytest.importorskip("transformers")

BATCH, PROMPT, DECODE_STEPS, VOCAB = 2, 20, 6, 64


def generate(model, config, forward, tokens=None, device="cpu", dynamic_cache=False):
    """Logits of the prefill (eager: a prefill is left to Inductor anyway, and compiling it would double the
    test's time) and of DECODE_STEPS steps through `forward`: greedy, or fed `tokens` [BATCH, DECODE_STEPS]; on a
    StaticCache, or on transformers' DynamicCache (which grows by concatenation)."""
    cache = transformers.DynamicCache() if dynamic_cache else make_cache(config)
    ids = torch.randint(0, VOCAB, (BATCH, PROMPT), generator=torch.Generator().manual_seed(1)).to(device)
    logits = [call(model.forward, model, ids, cache, 0)]
    for step in range(DECODE_STEPS):
        token = logits[-1][:, -1:].argmax(-1) if tokens is None else tokens[:, step:step + 1]
        logits.append(call(forward, model, token, cache, PROMPT + step))
    return logits


def sharpen_queries(model, factor: float) -> None:
    """Scale every layer's query projection: scores of O(10) instead of O(0.01)."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.weight", "query_key_value.weight")):
                parameter.mul_(factor)


def check_model(model, config, extension: str, num_layers: int, dynamic_cache=False):
    records = compiled_equals_eager(model, config, lambda model, config, forward: generate(
        model, config, forward, dynamic_cache=dynamic_cache))
    rewritten = [r for r in records if r.status == "rewritten"]
    skipped = [r for r in records if r.status == "skipped"]
    # Every layer of every decode graph (dynamo may compile the step twice as shapes turn dynamic).
    graphs = {r.graph for r in records}
    assert not skipped and len(rewritten) == num_layers * len(graphs), [str(r) for r in records]
    assert all(f"+{extension}" in r.form for r in rewritten), [r.form for r in rewritten]
    return rewritten


def bloom(width=32, heads=4):
    config = transformers.BloomConfig(vocab_size=VOCAB, hidden_size=width, n_layer=2, n_head=heads)
    torch.manual_seed(0)
    model = transformers.BloomForCausalLM(config).eval()
    sharpen_queries(model, 20.0)
    return model, config, "alibi", config.n_layer


def gpt_oss(head_dim=8, heads=4):
    config = transformers.GptOssConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=32, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=2, head_dim=head_dim, num_local_experts=4, num_experts_per_tok=2, sliding_window=6,
        max_position_embeddings=64, attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.GptOssForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.sinks.copy_(torch.linspace(-1.0, 4.0, config.num_attention_heads))
    sharpen_queries(model, 20.0)
    assert config.layer_types[0] == "sliding_attention"  # a sliding-window layer (its cache holds the window)
    return model, config, "sinks", config.num_hidden_layers


def gemma2(head_dim=8, heads=4):
    config = transformers.Gemma2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=heads,
        num_key_value_heads=2, head_dim=head_dim, sliding_window=6, attn_logit_softcapping=2.0,
        final_logit_softcapping=None, max_position_embeddings=64, attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(config).eval()
    sharpen_queries(model, 20.0)
    assert config.layer_types[0] == "sliding_attention"
    return model, config, "softcap", config.num_hidden_layers


# transformers 5.17 (the GPU image's) builds BLOOM's ALiBi from the tokens seen so far, which does not match a
# StaticCache's length: its forward fails there ("expanded size ... must match"); 5.24 sizes it by the cache.
# Before 5.24 BLOOM decodes on a DynamicCache instead, as generate() gives it by default.
BLOOM_TAKES_STATIC_CACHE = tuple(int(p) for p in transformers.__version__.split(".")[:2]) >= (5, 24)


def test_bloom_alibi():
    """On a StaticCache where this transformers can run BLOOM on one (5.24 on), else on its DynamicCache."""
    check_model(*bloom(), dynamic_cache=not BLOOM_TAKES_STATIC_CACHE)


def test_gpt_oss_sinks():
    check_model(*gpt_oss())


def test_gemma2_soft_cap():
    check_model(*gemma2())


def test_bloom_alibi_on_a_dynamic_cache():
    """BLOOM on transformers' default cache: its sites (symbolic lengths once the steps turn dynamic) are rewritten
    with ALiBi and the logits equal eager."""
    check_model(*bloom(), dynamic_cache=True)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("build, dynamic_cache", [
    pytest.param(lambda: bloom(width=256, heads=4), not BLOOM_TAKES_STATIC_CACHE, id="bloom"),
    pytest.param(lambda: gpt_oss(head_dim=64, heads=8), False, id="gpt_oss"),
    pytest.param(lambda: gemma2(head_dim=64, heads=8), False, id="gemma2"),
])
def test_fused_paths_on_the_gpu(cuda_device, build, dynamic_cache, dtype):
    """The decode steps in bf16/fp16 on the GPU kernels, fed the fp32 eager model's tokens: the compiled
    model's logit error against fp32 eager is at most twice eager's own in that dtype (FlashAttention's rule),
    plus a rounding allowance. (BLOOM on a DynamicCache where this transformers cannot run it on a StaticCache.)"""
    model, config, extension, num_layers = build()
    model = model.to(cuda_device)
    with torch.no_grad():
        reference = generate(model, config, model.forward, device=cuda_device, dynamic_cache=dynamic_cache)
        tokens = torch.cat([step[:, -1:].argmax(-1) for step in reference[:-1]], dim=1)
        model = model.to(dtype)
        eager = generate(model, config, model.forward, tokens, cuda_device, dynamic_cache)
        torch._dynamo.reset()
        glacompiler.reset_report()
        compiled = generate(model, config, torch.compile(model.forward, backend="gla"), tokens, cuda_device,
                            dynamic_cache)
    for ours, theirs, exact in list(zip(compiled, eager, reference))[1:]:
        allowed = 2 * (theirs.float() - exact).abs().max().item() + 1e-2 * exact.abs().max().item()
        assert (ours.float() - exact).abs().max().item() <= allowed
    rewritten = [r for r in glacompiler.compile_report() if r.status == "rewritten"]
    assert len(rewritten) >= num_layers and all(f"+{extension}" in r.form for r in rewritten)

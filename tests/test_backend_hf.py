"""Models no one here wrote: Hugging Face transformers' Llama (GQA) and DeepSeek-V3 (MLA), tiny random
configs (no download), StaticCache, a 20-token prefill (left to Inductor: longer than the op's 16 query
tokens) then 16 decode steps, all through torch.compile(backend="gla"). Every layer's decode attention must
be rewritten and the logits must equal eager."""
import inspect

import pytest
import torch

import glacompiler
from test_backend_support import assert_close

pytestmark = pytest.mark.slow  # whole models, subprocesses or wheel builds

transformers = pytest.importorskip("transformers")

BATCH, PROMPT, CAPACITY, DECODE_STEPS, VOCAB = 2, 20, 48, 16, 64


def make_cache(config):
    parameters = inspect.signature(transformers.StaticCache.__init__).parameters
    kwargs = {"config": config, "max_cache_len": CAPACITY}
    if "max_batch_size" in parameters:  # transformers 4.x
        kwargs.update(max_batch_size=BATCH, dtype=torch.float32, device="cpu")
    return transformers.StaticCache(**kwargs)


def call(forward, model, ids, cache, start):
    """One forward over ids at positions start.., with the cache argument named as this version names it."""
    parameters = inspect.signature(model.forward).parameters
    kwargs = {("cache" if "cache" in parameters else "past_key_values"): cache, "use_cache": True}
    if "cache_position" in parameters:
        kwargs["cache_position"] = torch.arange(start, start + ids.shape[1])
    return forward(input_ids=ids, **kwargs).logits


def generate(model, config, forward):
    """Logits of the prefill and of DECODE_STEPS greedy steps."""
    cache = make_cache(config)
    ids = torch.randint(0, VOCAB, (BATCH, PROMPT), generator=torch.Generator().manual_seed(1))
    logits = [call(forward, model, ids, cache, 0)]
    for step in range(DECODE_STEPS):
        token = logits[-1][:, -1:].argmax(-1)
        logits.append(call(forward, model, token, cache, PROMPT + step))
    return logits


def compiled_equals_eager(model, config, generate=generate) -> list:
    """Logits of `generate` through torch.compile(backend="gla") equal eager's (fp32, 1e-4); the report's
    records."""
    torch._dynamo.reset()
    glacompiler.reset_report()
    with torch.no_grad():
        compiled = generate(model, config, torch.compile(model.forward, backend="gla"))
        eager = generate(model, config, model.forward)
    for ours, theirs in zip(compiled, eager):
        assert_close(ours, theirs, tol=1e-4)
    return list(glacompiler.compile_report())


def check_model(model, config, kind, num_layers):
    records = compiled_equals_eager(model, config)
    rewritten = [r for r in records if r.status == "rewritten"]
    skipped = [r for r in records if r.status == "skipped"]
    assert len(rewritten) == num_layers and {r.kind for r in rewritten} == {kind}, [str(r) for r in records]
    assert len(skipped) == num_layers and all("prefill" in r.reason for r in skipped)
    return rewritten


@pytest.mark.parametrize("implementation, form", [("sdpa", "sdpa:"), ("eager", "decomposed softmax")])
def test_llama_static_cache(implementation, form):
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, attn_implementation=implementation,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    rewritten = check_model(model, config, "gqa", config.num_hidden_layers)
    assert all(r.form.startswith(form) for r in rewritten)
    assert all((r.spec.num_q_heads, r.spec.num_kv_heads, r.spec.head_dim_q) == (4, 2, 16) for r in rewritten)


def test_deepseek_v3_static_cache():
    """transformers' DeepSeek-V3 caches the latent and expands it through kv_b_proj into per-head K (nope +
    rope) and V before attention, every step: the pass absorbs kv_b_proj's halves into the query and the
    output, and the op attends to the latent cache itself (MLA; more in test_hf_deepseek.py)."""
    config = transformers.DeepseekV3Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1, n_routed_experts=4,
        num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=1, kv_lora_rank=32, q_lora_rank=48,
        qk_rope_head_dim=16, v_head_dim=32, qk_nope_head_dim=32, max_position_embeddings=128,
        attn_implementation="sdpa", rope_scaling=None,
    )
    torch.manual_seed(0)
    model = transformers.DeepseekV3ForCausalLM(config).eval()
    rewritten = check_model(model, config, "mla", config.num_hidden_layers)
    spec = rewritten[0].spec
    assert (spec.num_q_heads, spec.num_kv_heads, spec.head_dim_k, spec.rope_dim, spec.tied) == (4, 1, 32, 16, True)

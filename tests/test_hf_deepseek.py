"""transformers' DeepSeek-V3 and V2 (MLA: the latent is cached, then multiplied by kv_b_proj into per-head K
and V at every step) under torch.compile(backend="gla"): the decode sites are absorbed (the op runs on the
latent cache itself), the logits equal eager, and generate() on the default dynamic cache gives the same
greedy tokens without a recompile per step. Tiny random configs, no download."""
import inspect

import pytest
import torch

import glacompiler
from test_backend_support import assert_close

transformers = pytest.importorskip("transformers")

BATCH, PROMPT, CAPACITY, DECODE_STEPS, VOCAB = 2, 20, 40, 6, 64
LAYERS = 1


def deepseek_config(version: int, attn_implementation: str = "sdpa", **sizes):
    widths = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=LAYERS,
                  num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=48,
                  qk_rope_head_dim=16, v_head_dim=32, qk_nope_head_dim=24, max_position_embeddings=128,
                  attn_implementation=attn_implementation)
    widths.update(sizes)
    if version == 3:
        return transformers.DeepseekV3Config(first_k_dense_replace=widths["num_hidden_layers"], n_routed_experts=4,
                                             num_experts_per_tok=2, n_group=1, topk_group=1,
                                             moe_intermediate_size=32, rope_scaling=None, **widths)
    return transformers.DeepseekV2Config(first_k_dense_replace=widths["num_hidden_layers"], n_routed_experts=4,
                                         num_experts_per_tok=2, moe_intermediate_size=32, **widths)


def make_model(version: int, attn_implementation: str = "sdpa", **sizes):
    config = deepseek_config(version, attn_implementation, **sizes)
    torch.manual_seed(0)
    model_class = transformers.DeepseekV3ForCausalLM if version == 3 else transformers.DeepseekV2ForCausalLM
    return model_class(config).eval(), config


def static_cache(config, device="cpu", dtype=torch.float32):
    parameters = inspect.signature(transformers.StaticCache.__init__).parameters
    kwargs = {"config": config, "max_cache_len": CAPACITY}
    if "max_batch_size" in parameters:  # transformers 4.x
        kwargs.update(max_batch_size=BATCH, dtype=dtype, device=device)
    return transformers.StaticCache(**kwargs)


def greedy_logits(model, config, forward, device="cpu", dtype=torch.float32, tokens=None, prefill=None):
    """(logits, tokens fed) of a PROMPT-token prefill and DECODE_STEPS decode steps on a StaticCache: greedy, or
    the given tokens (so that runs in different precisions read the same inputs). prefill: the forward of the
    first step (default: forward)."""
    cache = static_cache(config, device, dtype)
    parameters = inspect.signature(model.forward).parameters
    cache_name = "cache" if "cache" in parameters else "past_key_values"
    ids = torch.randint(0, VOCAB, (BATCH, PROMPT), generator=torch.Generator().manual_seed(1)).to(device)
    logits, fed, start = [], [], 0
    for step in range(DECODE_STEPS + 1):
        if tokens is not None:
            ids = tokens[step]
        kwargs = {cache_name: cache, "use_cache": True}
        if "cache_position" in parameters:
            kwargs["cache_position"] = torch.arange(start, start + ids.shape[1], device=device)
        torch.compiler.cudagraph_mark_step_begin()
        fed.append(ids)
        step_forward = prefill if step == 0 and prefill is not None else forward
        logits.append(step_forward(input_ids=ids, **kwargs).logits.float())
        start += ids.shape[1]
        ids = logits[-1][:, -1:].argmax(-1)
    return logits, fed


def assert_decode_absorbed(records, kind="mla", latent_heads=1, prefill_compiled=True):
    decode = [r for r in records if r.status == "rewritten"]
    prefill = [r for r in records if r.status == "skipped"]
    assert len(decode) == LAYERS and all(r.kind == kind and r.form.endswith("(absorbed)") and r.mask == "lengths"
                                         for r in decode), [str(r) for r in records]
    assert all(r.spec.num_kv_heads == latent_heads for r in decode)
    assert len(prefill) == (LAYERS if prefill_compiled else 0) and all("prefill" in r.reason for r in prefill), [
        str(r) for r in records]
    return decode


@pytest.mark.slow
@pytest.mark.parametrize("version, implementation", [(3, "sdpa"), (2, "eager")])
def test_deepseek_static_cache_decode_is_absorbed(version, implementation):
    model, config = make_model(version, implementation)
    torch._dynamo.reset()
    glacompiler.reset_report()
    with torch.no_grad():
        compiled, _ = greedy_logits(model, config, torch.compile(model.forward, backend="gla"))
        eager, _ = greedy_logits(model, config, model.forward)
    for ours, theirs in zip(compiled, eager):
        assert_close(ours, theirs, tol=1e-4)
    decode = assert_decode_absorbed(glacompiler.compile_report())
    spec = decode[0].spec
    assert (spec.num_q_heads, spec.head_dim_k, spec.rope_dim, spec.tied) == (4, config.kv_lora_rank, 16, True)


@pytest.mark.slow
def test_deepseek_v3_generate_on_dynamic_cache():
    """model.generate() on its default DynamicCache (the latent cache grows by cat): the same greedy tokens as
    eager, and no compile after the warm-up steps (prefill, first decode, the decode that makes the length
    dynamic)."""
    model, config = make_model(3)
    prompt = torch.randint(0, VOCAB, (BATCH, PROMPT), generator=torch.Generator().manual_seed(2))
    new_tokens = 10
    with torch.no_grad():
        expected = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False)
    torch._dynamo.reset()
    glacompiler.reset_report()
    gla = glacompiler.backend()
    steps, compiled_at = [0], []

    def counting_backend(gm, example_inputs):
        compiled_at.append(steps[0])
        return gla(gm, example_inputs)

    compiled_forward = torch.compile(model.forward, backend=counting_backend)

    def forward(*args, **kwargs):
        steps[0] += 1
        return compiled_forward(*args, **kwargs)

    model.forward = forward
    try:
        with torch.no_grad():
            tokens = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False)
    finally:
        del model.forward
    assert steps[0] == new_tokens
    assert torch.equal(tokens, expected)
    assert compiled_at and max(compiled_at) <= 3, compiled_at
    records = glacompiler.compile_report()
    absorbed = [r for r in records if r.form.endswith("(absorbed)")]
    assert absorbed and all(r.kind == "mla" for r in absorbed), [str(r) for r in records]
    assert not [r for r in records if r.status == "rewritten" and r not in absorbed], [str(r) for r in records]


@pytest.mark.gpu
@pytest.mark.parametrize("version, cudagraphs", [(3, False), (3, True), (2, False)])
def test_deepseek_decode_absorbed_bf16_on_gpu(cuda_device, version, cudagraphs):
    """bf16 on the GPU at DeepSeek-like head widths: every step within FlashAttention's rule of an fp32 eager
    reference (all runs fed the reference's greedy tokens)."""
    model, config = make_model(version, "sdpa", hidden_size=256, num_attention_heads=8, num_key_value_heads=8,
                               kv_lora_rank=128, q_lora_rank=96, qk_rope_head_dim=64, qk_nope_head_dim=64,
                               v_head_dim=64)
    model = model.to(cuda_device)
    with torch.no_grad():
        reference, tokens = greedy_logits(model, config, model.forward, cuda_device, torch.float32)
    model = model.to(torch.bfloat16)
    torch._dynamo.reset()
    glacompiler.reset_report()
    backend = glacompiler.backend(cudagraphs=cudagraphs)
    with torch.no_grad():
        eager, _ = greedy_logits(model, config, model.forward, cuda_device, torch.bfloat16, tokens)
        # transformers' StaticCache allocates its tensors at the first update; inside a CUDA-graphed prefill they
        # would be graph-pool memory that later replays overwrite (its lazy_initialization docstring asks for
        # early initialization there): with graphs the prefill runs eagerly, as benchmarks/bench_hf.py does.
        compiled, _ = greedy_logits(model, config, torch.compile(model.forward, backend=backend), cuda_device,
                                    torch.bfloat16, tokens, prefill=model.forward if cudagraphs else None)
    assert_decode_absorbed(glacompiler.compile_report(), prefill_compiled=not cudagraphs)
    for ours, theirs, exact in zip(compiled, eager, reference):
        ours_error = (ours - exact).abs().max().item()
        eager_error = (theirs - exact).abs().max().item()
        assert ours_error <= 2 * eager_error + 1e-2 * exact.abs().max().item(), (ours_error, eager_error)

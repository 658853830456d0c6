"""Reference attention modules and TinyLM: decode through the fused op (absorbed for MLA/GLA) must reproduce
a causal prefill of the whole sequence; caches must hold exactly what the paper caches; presets must match
the paper's tables; the decode step must compile as one graph, once for all lengths."""
import math

import pytest
import torch
import torch._dynamo

from glacompiler.models import AttentionConfig, TinyLM, build_attention
from glacompiler.presets import PAPER_SIZES, PAPER_VARIANTS, attention_config, paper_config, tiny_config

VARIANTS = ["mha", "gqa-4", "mqa", "gta-4", "mla", "gla-2", "gla-8"]
BATCH = 3
PROMPT_LENS = [5, 8, 2]  # per sequence; the prompt batch is padded on the right to 8
TOTAL_LEN = 14  # every sequence decodes up to here; 14 - 8 = 6 tokens, in steps of 1, 2 or 3
CAPACITY = 20


def tiny(variant: str, **overrides):
    """tiny_config(variant), "mla-fullq" meaning MLA with a full-rank query."""
    if variant == "mla-fullq":
        return tiny_config("mla", q_latent_dim=0, **overrides)
    return tiny_config(variant, **overrides)


def assert_close(actual, expected, rtol=1e-4):
    """fp32 tolerance, relative to the size of the expected values."""
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * expected.abs().max().item())


def pad_prompts(inputs, prompt_lens, generator, make_garbage):
    """inputs[:, :max(prompt_lens)] with each row's slots past its own prompt replaced by garbage, which decode
    must overwrite (prefill caches it) and never read."""
    padded = inputs[:, : max(prompt_lens)].clone()
    for row, length in enumerate(prompt_lens):
        padded[row, length:] = make_garbage(padded[row, length:].shape, generator)
    return padded


def run_prefill_then_decode(prefill, decode, inputs, query_len, generator, make_garbage):
    """Prefill the padded prompts, then decode query_len tokens at a time, every sequence from its own length.
    Returns the final lengths and [(row, positions, outputs at those positions)], the prompts' included."""
    lengths = torch.tensor(PROMPT_LENS, dtype=torch.int32)
    prompt_out = prefill(pad_prompts(inputs, PROMPT_LENS, generator, make_garbage))
    results = [(row, torch.arange(length), prompt_out[row, :length]) for row, length in enumerate(PROMPT_LENS)]
    rows = torch.arange(BATCH)[:, None]
    for _ in range((TOTAL_LEN - max(PROMPT_LENS)) // query_len):
        positions = lengths.to(torch.long)[:, None] + torch.arange(query_len)
        lengths = lengths + query_len  # cache_seqlens count the new tokens
        out = decode(inputs[rows, positions], lengths)
        results.extend((row, positions[row], out[row]) for row in range(BATCH))
    return results, lengths


def random_hidden(shape, generator):
    return torch.randn(shape, generator=generator)


@pytest.mark.parametrize("query_len", [1, 3])
@pytest.mark.parametrize("variant", VARIANTS + ["mla-fullq"])
def test_attention_decode_matches_full_prefill(variant, query_len):
    """The cached decode path (fused op; absorbed W_UK/W_UV for MLA/GLA) equals the ordinary causal attention
    of the whole sequence, with a different length per sequence and NaN in every slot never written."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    config = tiny(variant).attention
    attention = build_attention(config)
    hidden = torch.randn(BATCH, TOTAL_LEN, config.d_model, generator=generator)
    with torch.no_grad():
        expected = attention.prefill(hidden)  # no cache: the ordinary form over the whole sequence
        cache = attention.new_cache(BATCH, CAPACITY).fill_(float("nan"))
        results, final_lens = run_prefill_then_decode(
            lambda x: attention.prefill(x, cache),
            lambda x, lens: attention.decode(x, cache, lens),
            hidden, query_len, generator, random_hidden,
        )
        for row, positions, out in results:
            assert_close(out, expected[row, positions])

        # The cache now holds what a prefill of the whole sequences caches, for every valid position.
        reference_cache = attention.new_cache(BATCH, CAPACITY)
        attention.prefill(hidden, reference_cache)
    for got, want in zip(cache.tensors(), reference_cache.tensors()):
        for row, length in enumerate(final_lens.tolist()):
            assert_close(got[row, :length], want[row, :length])


@pytest.mark.parametrize("query_len", [1, 3])
@pytest.mark.parametrize("variant", VARIANTS)
def test_tinylm_decode_matches_full_forward(variant, query_len):
    """Two layers: prefill of a right-padded prompt batch, then decode, gives the logits of one causal pass."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2)
    config = tiny(variant)
    model = TinyLM(config)
    tokens = torch.randint(0, config.vocab_size, (BATCH, TOTAL_LEN), generator=generator)
    with torch.no_grad():
        expected = model(tokens)
    model.setup_cache(BATCH, CAPACITY)
    for cache in model.caches:
        cache.fill_(float("nan"))

    def garbage_tokens(shape, gen):
        return torch.randint(0, config.vocab_size, shape, generator=gen)

    results, _ = run_prefill_then_decode(model.prefill, model.decode, tokens, query_len, generator, garbage_tokens)
    for row, positions, logits in results:
        assert_close(logits, expected[row, positions])


def test_decode_reads_the_cache_of_its_own_sequence_only():
    """The comparisons above can fail: corrupting one cached token of sequence 0 changes its decode output
    and leaves the other sequences' outputs unchanged."""
    torch.manual_seed(0)
    for variant in VARIANTS:
        attention = build_attention(tiny(variant).attention)
        hidden = torch.randn(BATCH, 9, attention.config.d_model)
        lengths = torch.full((BATCH,), 9, dtype=torch.int32)
        with torch.no_grad():
            cache = attention.new_cache(BATCH, CAPACITY)
            attention.prefill(hidden[:, :8], cache)
            clean = attention.decode(hidden[:, 8:], cache, lengths)
            attention.prefill(hidden[:, :8], cache)
            cache.k_cache[0, 3] += 1.0
            corrupted = attention.decode(hidden[:, 8:], cache, lengths)
        assert (corrupted[0] - clean[0]).abs().max() > 1e-3, variant
        torch.testing.assert_close(corrupted[1:], clean[1:], rtol=0, atol=0)


def expected_cache_shapes(variant: str, batch: int, capacity: int):
    """(k_cache, v_cache, k_rope_cache) shapes of the paper's caches, for tiny() sizes: 16 heads of 32, d_R 16."""
    head_dim, rope_dim = 32, 16
    grouped = {"mha": 16, "gqa-4": 4, "mqa": 1}
    if variant in grouped:  # K and V per KV head, no separate rope key
        shape = (batch, capacity, grouped[variant], head_dim)
        return shape, shape, None
    rope = (batch, capacity, rope_dim)
    if variant == "gta-4":  # tied state per KV head + one shared rope key
        return (batch, capacity, 4, head_dim), None, rope
    if variant == "mla":  # one latent of 4 d_h + rope key
        return (batch, capacity, 1, 4 * head_dim), None, rope
    latent_heads = int(variant.split("-")[1])  # gla-N: N latent heads of 2 d_h + rope key
    return (batch, capacity, latent_heads, 2 * head_dim), None, rope


@pytest.mark.parametrize("variant", VARIANTS)
def test_cache_holds_exactly_what_the_paper_caches(variant):
    cache = build_attention(tiny(variant).attention).new_cache(2, 7)
    tensors = (cache.k_cache, cache.v_cache, cache.k_rope_cache)
    got = tuple(None if t is None else tuple(t.shape) for t in tensors)
    assert got == expected_cache_shapes(variant, 2, 7)
    elements = sum(math.prod(shape[2:]) for shape in got if shape is not None)
    assert cache.bytes_per_token() == elements * 4  # float32


def test_cache_sizes_relate_as_the_paper_says():
    def bytes_per_token(variant):
        return build_attention(tiny(variant).attention).new_cache(1, 1).bytes_per_token()

    rope_bytes = 16 * 4
    # GTA ties K and V: half of GQA's cache with the same KV heads and d_h, plus the one shared rope key.
    assert bytes_per_token("gta-4") == bytes_per_token("gqa-4") // 2 + rope_bytes
    # MLA and GLA-2 cache the same amount (4 d_h + d_R); GLA-8 four times the latent.
    assert bytes_per_token("mla") == bytes_per_token("gla-2") == (4 * 32) * 4 + rope_bytes
    assert bytes_per_token("gla-8") == 4 * (4 * 32) * 4 + rope_bytes


@pytest.mark.parametrize("variant, bytes_per_token", [
    ("mha", 8192), ("gqa-4", 2048), ("gta-4", 1152), ("gla-2", 1152), ("mla", 1152),
])
def test_paper_xl_cache_bytes_match_table_5(variant, bytes_per_token):
    """Table 5 of arXiv 2505.21487: KV cache bytes per token of one layer at TP=1, bf16, XL model. MLA there is
    512 + 64 elements, as in DeepSeek."""
    with torch.device("meta"):
        model = TinyLM(paper_config("xl", variant, n_layers=1))
        model.setup_cache(1, 1, dtype=torch.bfloat16)
    assert model.cache_bytes_per_token() == bytes_per_token


def author_bias_parameters(config) -> int:
    """Bias terms of the authors' released modeling code (nn.Linear defaults there) that these bias-free
    modules leave out: GTA's rope-key projection; MLA/GLA's query down/up, KV down and KV up projections."""
    a = config.attention
    if a.kind == "gta":
        return config.n_layers * a.rope_dim
    if a.kind in ("mla", "gla"):
        per_layer = (a.q_latent_dim + a.n_heads * (a.head_dim + a.rope_dim)
                     + a.n_latent_heads * a.latent_dim + a.rope_dim + 2 * a.n_heads * a.head_dim)
        return config.n_layers * per_layer
    return 0


@pytest.mark.parametrize("size, variant", [(s, v) for s, table in PAPER_VARIANTS.items() for v in table])
def test_paper_presets_reproduce_parameter_counts(size, variant):
    """Tables 6-10: with the paper's sizes and FFN widths, the parameter count (in millions, to the paper's two
    decimals) comes out as printed; built on the meta device, so nothing is allocated."""
    config = paper_config(size, variant)
    assert (config.n_layers, config.d_model) == (PAPER_SIZES[size].n_layers, PAPER_SIZES[size].d_model)
    with torch.device("meta"):
        model = TinyLM(config)
    count = sum(p.numel() for p in model.parameters()) + author_bias_parameters(config)
    assert round(count / 1e6, 2) == PAPER_VARIANTS[size][variant][1]


@pytest.mark.parametrize("variant", ["gqa-4", "gta-4", "mla", "gla-2"])
def test_decode_step_compiles_once_as_one_graph(variant):
    """torch.compile(fullgraph=True) traces the whole decode step, cache writes included, and does not
    recompile as the lengths grow; the compiled step gives the eager logits. (aot_eager keeps this test fast
    on CPU; it runs the same functionalized graph Inductor would compile.)"""
    torch.manual_seed(0)
    torch._dynamo.reset()
    config = tiny(variant)
    model = TinyLM(config)
    tokens = torch.randint(0, config.vocab_size, (BATCH, 12))
    with torch.no_grad():
        expected = model(tokens)
    model.setup_cache(BATCH, CAPACITY)
    model.prefill(tokens[:, :6])
    step = torch.compile(model.decode, fullgraph=True, backend="aot_eager")
    lengths = torch.tensor([6, 6, 6], dtype=torch.int32)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for position in range(6, 12, 2):
            lengths = lengths + 2
            assert_close(step(tokens[:, position:position + 2], lengths), expected[:, position:position + 2])


def test_configs_reject_what_the_kinds_cannot_be():
    with pytest.raises(ValueError, match="rope_dim < head_dim"):
        AttentionConfig("gta", d_model=64, n_heads=4, head_dim=32, n_kv_heads=2, rope_dim=32)
    with pytest.raises(ValueError, match="multiple of n_latent_heads"):
        AttentionConfig("gla", d_model=64, n_heads=6, head_dim=32, n_latent_heads=4)
    with pytest.raises(ValueError, match="exactly one latent head"):
        AttentionConfig("mla", d_model=64, n_heads=4, head_dim=32, n_latent_heads=2)
    with pytest.raises(ValueError, match="needs n_kv_heads"):
        AttentionConfig("gqa", d_model=64, n_heads=4, head_dim=32)
    with pytest.raises(ValueError, match="unknown attention variant"):
        attention_config("gqa", d_model=64, n_heads=4, head_dim=32)
    with pytest.raises(ValueError, match="trains no"):
        paper_config("xl", "mqa")
    defaults = attention_config("gla-2", d_model=2048, n_heads=16, head_dim=128)
    assert (defaults.n_latent_heads, defaults.latent_dim, defaults.rope_dim) == (2, 256, 64)
    assert attention_config("mla", d_model=2048, n_heads=16, head_dim=128).latent_dim == 512

"""benchmarks/fixed_cost_parts.py's variants of the op's split kernel, under the interpreter on GTA and GQA: each
renders from today's template and runs; the ones that keep the op's result give it; a template the edits no longer
fit fails here, not on a GPU lease."""
import pytest
import torch

from benchmark_scripts import load_benchmark_script

CONFIG = dict(block_m=16, block_n=64, block_d=64, num_splits=2, num_warps=4, num_stages=2)


@pytest.fixture
def parts(interpret_kernels):
    return load_benchmark_script("fixed_cost_parts")


@pytest.mark.parametrize("case, query_len", [("gta", 4), ("gqa", 1)])
def test_every_variant_runs_and_the_checked_ones_keep_the_result(parts, case, query_len):
    import glacompiler
    from glacompiler.kernels.portable.config import PortableConfig
    from glacompiler.reference import attention_with_kvcache_reference

    ab_decode = load_benchmark_script("ab_decode")
    kwargs = ab_decode.make_inputs(case, 2, 256, query_len, 64, device="cpu", dtype=torch.float16)
    q_rope = kwargs.get("q_rope")
    scale = parts.op_default_scale(kwargs)
    config = PortableConfig(**CONFIG)
    call = lambda: glacompiler.attention_with_kvcache_config(**kwargs, config=config, softmax_scale=scale)[0]  # noqa
    expected, _ = attention_with_kvcache_reference(
        kwargs["q"], kwargs["k_cache"], kwargs.get("v_cache"), q_rope=q_rope, k_rope_cache=kwargs.get("k_rope_cache"),
        cache_seqlens=kwargs["cache_seqlens"], page_table=kwargs["page_table"], softmax_scale=scale,
        compute_dtype=torch.float32)
    parts.check_variants(call, expected)  # raises where a checked variant's output differs
    with parts.split_kernel_variant("no_store"), parts.combine_stubbed():
        split_out = call()  # nothing stored: the partials stay as allocated, unmerged
    assert split_out.shape == expected.shape
    with parts.split_kernel_variant("known_len"):
        torch.testing.assert_close(call().float(), expected.float(), atol=2e-2, rtol=0)


def test_the_edits_name_what_they_change(parts):
    from glacompiler.kernels.portable.config import PortableConfig
    from glacompiler.kernels.portable.render import render_decode_kernel
    from glacompiler.spec import AttentionSpec

    source = render_decode_kernel(AttentionSpec.grouped_tied(16, 4, 128, 64, paged=True), PortableConfig(**CONFIG))
    assert "seqlen = capacity" in parts.variant_source(source, "known_len")
    no_store = parts.variant_source(source, "no_store").split("# Empty rows")[1]
    assert no_store.count("tl.store(") == no_store.count(parts.NEVER) > 0
    assert "p_low = scores.to" in parts.variant_source(source, "no_softmax")
    assert parts.variant_source(source, "base") == source
    with pytest.raises(ValueError, match="variant"):
        parts.variant_source(source, "no_loads")
    with pytest.raises(ValueError, match="no_softmax: the rendered kernel has no maskless key loop"):
        parts.variant_source(source.replace(parts.MASKLESS_LOOP, "    else:\n        for key_start"), "no_softmax")

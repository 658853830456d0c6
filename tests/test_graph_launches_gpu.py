"""Sites whose kernels Inductor launches itself (glacompiler/compiler/rewrite/graph_launches.py), or writes into
the graph's buffers through attention_into (the Hopper latent kernel), on a CUDA GPU: the compiled step, with
Inductor's C++ and Python wrappers and under CUDA graphs, against the same step with op calls (the same kernels
and configs launched by the op) and an fp32 reference."""
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import glacompiler
from glacompiler.op import prepared
from test_backend_gpu import check_fa_rule
from test_backend_support import compile_and_count

pytestmark = pytest.mark.gpu


def masked_gqa_step(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def step_inputs(batch, capacity, seed=0, dtype=torch.bfloat16):
    """q [B, 8, 1, 64], caches [B, 2, S, 64], a bool mask of random lengths (one of them the whole cache)."""
    generator = torch.Generator(device="cuda").manual_seed(batch * 7919 + capacity + 104729 * seed)
    q, k, v = (torch.randn(shape, device="cuda", generator=generator).to(dtype)
               for shape in ((batch, 8, 1, 64), (batch, 2, capacity, 64), (batch, 2, capacity, 64)))
    lengths = torch.randint(1, capacity + 1, (batch,), device="cuda", generator=generator)
    lengths[0] = capacity
    mask = (torch.arange(capacity, device="cuda") < lengths[:, None])[:, None, None, :]
    return q, k, v, mask


@pytest.mark.parametrize("cpp_wrapper", [True, False])
@pytest.mark.parametrize("batch, capacity", [(4, 512), (1, 8192)])  # one split; several, and the combine
def test_launched_site_matches_the_op_call(cuda_device, batch, capacity, cpp_wrapper):
    inputs = step_inputs(batch, capacity)
    launched, counts, records = compile_and_count(masked_gqa_step, *inputs,
                                                  backend=glacompiler.backend(cpp_wrapper=cpp_wrapper))
    assert [r.status for r in records] == ["rewritten"]
    assert counts[0]["gla_launched_in_graph"] == 1 and counts[0]["mask_range_launched_in_graph"] == 1
    called, counts, _ = compile_and_count(masked_gqa_step, *inputs, backend=glacompiler.backend(
        cpp_wrapper=cpp_wrapper, graph_launches=False))
    assert counts[0]["gla"] == 1 and counts[0]["gla_launched_in_graph"] == 0
    torch.testing.assert_close(launched, called, rtol=0, atol=0)  # the same kernels on the same config
    with torch.no_grad():
        reference = masked_gqa_step(*(t.float() if t.is_floating_point() else t for t in inputs))
        check_fa_rule(launched, masked_gqa_step(*inputs), reference)


def test_launched_site_under_cuda_graphs_follows_new_inputs(cuda_device):
    """Replays read the step's new inputs (the launches take the graph's buffers, not the first call's)."""
    torch._dynamo.reset()
    launched_before = counters["glacompiler"]["launched_in_graph"]
    compiled = torch.compile(masked_gqa_step, backend=glacompiler.backend(cudagraphs=True))
    # (no cached graph: the pass must run for its counter to count)
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        for step in range(4):
            inputs = step_inputs(8, 1024, seed=step)
            out = compiled(*inputs).clone()
            reference = masked_gqa_step(*(t.float() if t.is_floating_point() else t for t in inputs))
            check_fa_rule(out, masked_gqa_step(*inputs), reference)
    assert counters["glacompiler"]["launched_in_graph"] - launched_before == 2  # the attention and its mask range


def latent_step(q, q_rope, latent_cache, rope_cache, lengths):
    """An absorbed MLA decode step written with the op: one 512-wide latent and a 64-wide rope key per token."""
    return glacompiler.attention_with_kvcache(q, latent_cache, q_rope=q_rope, k_rope_cache=rope_cache,
                                              cache_seqlens=lengths, softmax_scale=192 ** -0.5)


def latent_inputs(batch, heads, capacity, dtype=torch.bfloat16, seed=0):
    generator = torch.Generator(device="cuda").manual_seed(heads * 131 + batch + 7919 * seed)
    q, q_rope, latent, rope = (torch.randn(shape, device="cuda", generator=generator).to(dtype) for shape in (
        (batch, 1, heads, 512), (batch, 1, heads, 64), (batch, capacity, 1, 512), (batch, capacity, 64)))
    lengths = torch.randint(1, capacity + 1, (batch,), device="cuda", generator=generator, dtype=torch.int32)
    lengths[0] = capacity
    return q, q_rope, latent, rope, lengths


def latent_sdpa(q, q_rope, latent, rope, lengths):
    """The same attention as latent_step through eager SDPA (the baseline in the inputs' precision): keys are the
    latent and the rope key joined, values the latent, one KV head shared by every query head."""
    heads, capacity = q.shape[2], latent.shape[1]
    keys = torch.cat([latent[:, :, 0], rope], dim=-1)[:, None].expand(-1, heads, -1, -1)
    values = latent[:, :, 0][:, None].expand(-1, heads, -1, -1)
    allowed = (torch.arange(capacity, device=q.device) < lengths[:, None])[:, None, None, :]
    query = torch.cat([q, q_rope], dim=-1).transpose(1, 2)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=allowed, scale=192 ** -0.5).transpose(1, 2)


@pytest.mark.parametrize("batch, heads, capacity, launched", [
    (8, 16, 2048, True), (8, 64, 2048, False), (64, 16, 16384, False)])  # the last: 1152 MiB of cache, over 1 GiB
def test_latent_sites_launched_on_the_portable_kernels(cuda_device, batch, heads, capacity, launched):
    """By default (latent_in_graph, without CUDA graphs) a latent site of at most 16 query rows per latent head is
    launched by Inductor on the portable kernels (the Hopper kernel is Gluon, which Inductor cannot launch): the
    same output, bit for bit, as the op run eagerly on the portable config the trace chose. A wider site, or one
    with more than 1 GiB of cache, keeps the Hopper kernel, written into the graph's buffers through
    attention_into, as every site does with latent_in_graph=False: the same output, bit for bit, as the op's own
    call, eager or from the graph (graph_launches=False). Each within FlashAttention's rule of an fp32
    reference."""
    from glacompiler.kernels import LATENT_HOPPER, PORTABLE
    from glacompiler.op import kernel_family_for
    from glacompiler.op.dispatch import choose_config
    from glacompiler.op.validation import validate_inputs

    inputs = latent_inputs(batch, heads, capacity)
    q, q_rope, latent, rope, lengths = inputs
    family = kernel_family_for(q, latent, q_rope=q_rope, k_rope_cache=rope, cache_seqlens=lengths)
    if family is not LATENT_HOPPER:
        pytest.skip(f"the Hopper latent kernel does not run here ({family.name} does): nothing to trade")
    in_graph, counts, _ = compile_and_count(latent_step, *inputs, backend=glacompiler.backend())
    assert counts[0]["gla"] == counts[0]["gla_launched_in_graph"] == 1
    assert counts[0]["gla_into_buffers"] == int(not launched)
    prepared.calls_into_buffers.clear()
    into_buffers, counts, _ = compile_and_count(latent_step, *inputs,
                                                backend=glacompiler.backend(latent_in_graph=False))
    assert counts[0]["gla_launched_in_graph"] == counts[0]["gla_into_buffers"] == 1
    assert_launched_into_the_buffers()
    op_calls, counts, _ = compile_and_count(latent_step, *inputs, backend=glacompiler.backend(graph_launches=False))
    assert counts[0]["gla"] == 1 and counts[0]["gla_launched_in_graph"] == 0
    with torch.no_grad():
        eager = latent_step(*inputs)
        assert torch.equal(op_calls, eager) and torch.equal(into_buffers, eager)  # the Hopper kernel, its config
        if launched:
            spec, shape = validate_inputs(q, latent, None, q_rope, rope, lengths, None, None, 192 ** -0.5, None)
            config = choose_config(PORTABLE, spec, shape, q.device)
            portable, _ = glacompiler.attention_with_kvcache_config(
                q, latent, config=config, q_rope=q_rope, k_rope_cache=rope, cache_seqlens=lengths,
                softmax_scale=192 ** -0.5)
            assert torch.equal(in_graph, portable)
        else:
            assert torch.equal(in_graph, eager)
        reference = latent_sdpa(*(t.float() if t.is_floating_point() else t for t in inputs))
        low_precision = latent_sdpa(*inputs)
    for output in (in_graph, into_buffers):
        check_fa_rule(output, low_precision, reference)


def masked_latent_step(q, q_rope, latent_cache, rope_cache, mask):
    """latent_step with a bool mask [B, 1, 1, S] for its lengths: the graph reduces its key range itself."""
    return glacompiler.attention_with_kvcache(q, latent_cache, q_rope=q_rope, k_rope_cache=rope_cache,
                                              attn_mask=mask, softmax_scale=192 ** -0.5)


def hopper_latent_or_skip(inputs):
    from glacompiler.kernels import LATENT_HOPPER
    from glacompiler.op import kernel_family_for

    q, q_rope, latent, rope, lengths = inputs
    family = kernel_family_for(q, latent, q_rope=q_rope, k_rope_cache=rope, cache_seqlens=lengths)
    if family is not LATENT_HOPPER:
        pytest.skip(f"the Hopper latent kernel does not run here ({family.name} does)")


@pytest.mark.parametrize("cpp_wrapper", [True, False])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("batch, capacity", [(64, 1024), (1, 32768)])  # one split; many, and the graph's combine
def test_hopper_sites_write_the_graphs_buffers(cuda_device, batch, capacity, masked, cpp_wrapper):
    """128-head GLA-2-wide sites (the Hopper kernel): the graph allocates, reduces a mask's range and combines the
    splits; attention_into launches the kernel. Bit for bit the op's own call, under both of Inductor's wrappers."""
    inputs = latent_inputs(batch, 128, capacity)
    hopper_latent_or_skip(inputs)
    q, q_rope, latent, rope, lengths = inputs
    step, arguments = latent_step, inputs
    if masked:
        mask = (torch.arange(capacity, device="cuda") < lengths[:, None])[:, None, None, :]
        step, arguments = masked_latent_step, (q, q_rope, latent, rope, mask)
    prepared.calls_into_buffers.clear()
    output, counts, _ = compile_and_count(step, *arguments, backend=glacompiler.backend(cpp_wrapper=cpp_wrapper))
    assert counts[0]["gla_into_buffers"] == 1 and counts[0]["gla"] == 1
    assert_launched_into_the_buffers()
    with torch.no_grad():
        assert torch.equal(output, step(*arguments))


def assert_launched_into_the_buffers():
    """attention_into's calls so far launched the kernel into the graph's buffers (none fell back to the op's own
    call and a copy, which gives the same output)."""
    calls = list(prepared.calls_into_buffers.values())
    assert calls and all(call.into_buffers for call in calls)


def test_hopper_sites_under_cuda_graphs_follow_new_inputs(cuda_device):
    """Replays launch the Hopper kernel on each step's inputs into the graph pool's buffers."""
    hopper_latent_or_skip(latent_inputs(4, 128, 4096))
    torch._dynamo.reset()
    compiled = torch.compile(latent_step, backend=glacompiler.backend(cudagraphs=True))
    with torch.no_grad(), torch._inductor.config.patch(fx_graph_cache=False), \
            torch._functorch.config.patch(enable_autograd_cache=False):
        for step in range(4):
            inputs = latent_inputs(4, 128, 4096, seed=step)
            out = compiled(*inputs).clone()
            assert torch.equal(out, latent_step(*inputs))
    assert_launched_into_the_buffers()

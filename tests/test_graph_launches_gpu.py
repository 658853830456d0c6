"""Sites whose kernels Inductor launches itself (glacompiler/compiler/rewrite/graph_launches.py) on a CUDA GPU:
the compiled step, with Inductor's C++ and Python wrappers and under CUDA graphs, against the same step with op
calls (the same kernels and configs launched by the op) and an fp32 reference."""
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

import glacompiler
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


def latent_inputs(batch, heads, capacity, dtype=torch.bfloat16):
    generator = torch.Generator(device="cuda").manual_seed(heads * 131 + batch)
    q, q_rope, latent, rope = (torch.randn(shape, device="cuda", generator=generator).to(dtype) for shape in (
        (batch, 1, heads, 512), (batch, 1, heads, 64), (batch, capacity, 1, 512), (batch, capacity, 64)))
    lengths = torch.randint(1, capacity + 1, (batch,), device="cuda", generator=generator, dtype=torch.int32)
    lengths[0] = capacity
    return q, q_rope, latent, rope, lengths


@pytest.mark.parametrize("heads", [16, 64])
def test_latent_sites_launched_on_the_portable_kernels(cuda_device, heads):
    """With latent_in_graph=True (and no CUDA graphs) a latent site of at most 16 query rows per latent head is
    launched by Inductor on the portable kernels (the Hopper kernel is Gluon: an op call), a wider one keeps the
    Hopper op call, as every one does by default. Both within FlashAttention's rule of an fp32 reference."""
    inputs = latent_inputs(8, heads, 2048)
    on_hopper = torch.cuda.get_device_capability(cuda_device) == (9, 0)
    by_rule, counts, _ = compile_and_count(latent_step, *inputs, backend=glacompiler.backend(latent_in_graph=True))
    assert counts[0]["gla"] == 1 and counts[0]["gla_launched_in_graph"] == int(heads <= 16 or not on_hopper)
    kept, counts, _ = compile_and_count(latent_step, *inputs, backend=glacompiler.backend())
    assert counts[0]["gla"] == 1 and counts[0]["gla_launched_in_graph"] == int(not on_hopper)
    q, q_rope, latent, rope, lengths = inputs
    with torch.no_grad():  # the same bf16 inputs, computed in fp32 and in bf16
        reference, low_precision = (glacompiler.attention_with_kvcache_reference(
            q, latent, q_rope=q_rope, k_rope_cache=rope, cache_seqlens=lengths, softmax_scale=192 ** -0.5,
            compute_dtype=dtype, out_dtype=dtype)[0] for dtype in (torch.float32, torch.bfloat16))
    for output in (by_rule, kept):
        check_fa_rule(output, low_precision, reference)

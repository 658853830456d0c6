"""Weight absorption (glacompiler/compiler/absorb/): MLA and GLA written in the expanding form (K and V
rebuilt per head from the latent cache at every step, the rope key joined by cat, by copies into new_empty,
or added as its own score term) become the absorbed op call on the latent cache; everything that is not
exactly such an expansion keeps its expanded form, with the reason in the report."""
import inspect

import pytest
import torch
import torch.nn.functional as F

import test_absorb
from test_backend_support import PassHarness, assert_close, run_pass

aten = torch.ops.aten
BATCH, CAPACITY, HEADS, NOPE, ROPE, VALUE, LATENT = 2, 24, 4, 16, 16, 16, 32
SCALE = 0.17  # not 1/sqrt(head dim): the model's own scale must reach the op


def make_inputs(latent_heads: int, query_len: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    per_group = HEADS // latent_heads
    q = torch.randn(BATCH, HEADS, query_len, NOPE + ROPE, generator=g)
    latent = torch.randn(BATCH, CAPACITY, latent_heads, LATENT, generator=g)
    rope = torch.randn(BATCH, CAPACITY, ROPE, generator=g)
    weight = torch.randn(latent_heads, per_group * (NOPE + VALUE), LATENT, generator=g) / LATENT ** 0.5
    lengths = torch.randint(min(query_len + 1, CAPACITY), CAPACITY + 1, (BATCH,), generator=g)
    positions = lengths[:, None] - query_len + torch.arange(query_len)[None]
    mask = (torch.arange(CAPACITY)[None, None, :] <= positions[:, :, None])[:, None]  # [B, 1, L, S]
    return q, latent, rope, weight, mask


def expand(latent, weight):
    """[B, H, S, nope] keys and [B, H, S, v] values, per head from the latent (one linear map per latent
    head: MLA's kv_b_proj when there is one latent head)."""
    if latent.shape[2] == 1:
        kv = F.linear(latent[:, :, 0], weight[0])  # [B, S, H * (nope + v)]
    else:
        kv = torch.einsum("bsgc,gxc->bsgx", latent, weight)
    kv = kv.reshape(latent.shape[0], CAPACITY, HEADS, NOPE + VALUE).transpose(1, 2)
    return torch.split(kv, [NOPE, VALUE], dim=-1)


def join_key(k_nope, rope, join):
    k_rope = rope[:, None].expand(-1, HEADS, -1, -1)
    if join == "cat":
        return torch.cat([k_nope, k_rope], dim=-1)
    key = k_nope.new_empty(k_nope.shape[0], HEADS, CAPACITY, NOPE + ROPE)
    key[..., :NOPE].copy_(k_nope)
    key[..., NOPE:].copy_(rope[:, None] if join == "copy_broadcast" else k_rope)
    return key


def attend(q, key, value, mask, form):
    if form == "sdpa":
        return F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=SCALE)
    scores = (q @ key.transpose(-1, -2)) * SCALE
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ value


def expanding_attention(join, form):
    def fn(q, latent, rope, weight, mask):
        k_nope, value = expand(latent, weight)
        if join == "none":
            return attend(q[..., :NOPE], k_nope, value, mask, form)
        if join == "scores":  # the rope key as its own score term
            scores = q[..., :NOPE] @ k_nope.transpose(-1, -2) + q[..., NOPE:] @ rope[:, None].transpose(-1, -2)
            scores = (scores * SCALE).masked_fill(~mask, float("-inf"))
            return torch.softmax(scores, dim=-1) @ value
        return attend(q, join_key(k_nope, rope, join), value, mask, form)
    return fn


def _rope_first(q, latent, rope, weight, mask):
    """K = [rope key, latent map]: the query's channels are matched by position, not assumed nope-first."""
    k_nope, value = expand(latent, weight)
    key = torch.cat([rope[:, None].expand(-1, HEADS, -1, -1), k_nope], dim=-1)
    return attend(torch.cat([q[..., NOPE:], q[..., :NOPE]], dim=-1), key, value, mask, "sdpa")


def _shared_by_query_pairs(q, latent, rope, weight, mask):
    """The map yields K and V for HEADS // 2 heads, each read by two query heads (SDPA's enable_gqa)."""
    kv = F.linear(latent[:, :, 0], weight[0][: (HEADS // 2) * (NOPE + VALUE)])
    kv = kv.reshape(BATCH, CAPACITY, HEADS // 2, NOPE + VALUE).transpose(1, 2)
    k_nope, value = torch.split(kv, [NOPE, VALUE], dim=-1)
    key = torch.cat([k_nope, rope[:, None].expand(-1, HEADS // 2, -1, -1)], dim=-1)
    return F.scaled_dot_product_attention(q, key, value, attn_mask=mask, scale=SCALE, enable_gqa=True)


@pytest.mark.parametrize("fn", [_rope_first, _shared_by_query_pairs])
def test_other_layouts_are_absorbed(fn):
    inputs = make_inputs(1)
    result = run_pass(fn, *inputs)
    assert_close(result.output, fn(*inputs), tol=1e-4)
    [record] = result.records
    assert record.kind == "mla" and record.form.endswith("(absorbed)"), str(record)
    assert (record.spec.num_q_heads, record.spec.rope_dim) == (HEADS, ROPE)


def op_calls(result):
    return result.op_calls()


@pytest.mark.parametrize("latent_heads", [1, 2])
@pytest.mark.parametrize("join, form", [("cat", "sdpa"), ("copy", "sdpa"), ("copy_broadcast", "softmax"),
                                        ("cat", "softmax"), ("scores", "softmax"), ("none", "sdpa")])
def test_expanding_form_is_absorbed(latent_heads, join, form):
    fn = expanding_attention(join, form)
    inputs = make_inputs(latent_heads, query_len=2 if join == "copy" else 1)
    result = run_pass(fn, *inputs)
    assert_close(result.output, fn(*inputs), tol=1e-4)
    [record] = result.records
    assert record.status == "rewritten" and record.form.endswith("(absorbed)"), str(record)
    assert record.kind == ("mla" if latent_heads == 1 else "gla")
    rope = 0 if join == "none" else ROPE
    assert (record.spec.num_q_heads, record.spec.num_kv_heads, record.spec.head_dim_k, record.spec.rope_dim) == (
        HEADS, latent_heads, LATENT, rope)
    [call] = op_calls(result)
    q, k_cache, v_cache, q_rope, k_rope = call.args[:5]
    assert v_cache is None and list(k_cache.meta["val"].shape) == [BATCH, CAPACITY, latent_heads, LATENT]
    assert (k_rope is None) == (rope == 0)
    assert call.args[8] == pytest.approx(SCALE)
    # The expansion over the whole cache is gone: every product left is on the new tokens or the weights.
    assert all(CAPACITY not in node.meta["val"].shape[:-1] for node in result.graph.nodes
               if node.op == "call_function" and node.target in (aten.bmm.default, aten.mm.default))


@pytest.mark.parametrize("latent_heads, join", [(1, "copy"), (2, "cat")])
def test_absorbed_call_runs_the_generated_kernels(interpret_kernels, latent_heads, join):
    """The absorbed call's operands (views of the caches, the folded query) as the Triton kernels read them,
    under the interpreter."""
    fn = expanding_attention(join, "sdpa")
    inputs = make_inputs(latent_heads)
    result = run_pass(fn, *inputs)
    assert_close(result.output, fn(*inputs), tol=1e-4)
    assert result.records[0].form.endswith("(absorbed)")


def test_symbolic_batch_is_absorbed(monkeypatch):
    """A third batch size makes dynamo compile the batch as a symbol: the absorbed form keeps it symbolic."""
    fn = expanding_attention("copy", "sdpa")
    harness = PassHarness(fn)
    for batch in (2, 3, 5):
        monkeypatch.setattr(test_absorb, "BATCH", batch)
        inputs = make_inputs(2)
        assert_close(harness(*inputs), fn(*inputs), tol=1e-4)
        [record] = harness.result().records
        assert record.kind == "gla" and record.form.endswith("(absorbed)"), str(record)
    values = [node.meta.get("val") for node in harness.result().graph.find_nodes(op="placeholder")]
    assert any(isinstance(v, torch.Tensor) and not isinstance(v.shape[0], int) for v in values)


def _rejoined_at(q, latent, rope, weight, mask, cut):
    k_nope, value = expand(latent, weight)
    key = join_key(k_nope, rope, "cat")
    width = cut.shape[0]  # symbolic: cut is marked dynamic
    key = torch.cat([key[..., :width], key[..., width:]], dim=-1)
    return attend(q, key, value, mask, "sdpa")


@pytest.mark.parametrize("dynamic, reason, fix", [
    ("latent width", "the key weight has a symbolic size", "a weight of fixed shape"),
    ("key part", "a part of the concatenated key has a symbolic width", "key parts of fixed widths"),
])
def test_symbolic_sizes_keep_the_expanded_form(dynamic, reason, fix):
    """Sizes dynamo made dynamic that the absorbed form cannot take (the expanded site's own dims are fixed)."""
    q, latent, rope, weight, mask = make_inputs(1)
    if dynamic == "latent width":
        fn, inputs = expanding_attention("cat", "sdpa"), (q, latent, rope, weight, mask)
        torch._dynamo.mark_dynamic(latent, 3)
        torch._dynamo.mark_dynamic(weight, 2)
    else:
        fn, inputs = _rejoined_at, (q, latent, rope, weight, mask, torch.zeros(10))
        torch._dynamo.mark_dynamic(inputs[-1], 0)
    harness = PassHarness(fn)
    assert_close(harness(*inputs), fn(*inputs), tol=1e-4)
    [record] = harness.result().records
    assert record.status == "rewritten" and not record.form.endswith("(absorbed)"), str(record)
    assert record.reason.startswith("not absorbed: ") and reason in record.reason, record.reason
    assert fix in record.reason.split("; to absorb: ", 1)[1], record.reason


def test_prefill_keeps_the_expanded_form():
    fn = expanding_attention("cat", "sdpa")
    inputs = make_inputs(1, query_len=CAPACITY)
    inputs = inputs[:4] + (torch.ones(BATCH, 1, CAPACITY, CAPACITY, dtype=torch.bool).tril(),)
    result = run_pass(fn, *inputs)
    assert_close(result.output, fn(*inputs), tol=1e-4)
    [record] = result.records
    assert record.status == "skipped" and "prefill" in record.reason
    assert not op_calls(result)


def _different_latents(q, latent, rope, weight, mask):
    k_nope, _ = expand(latent, weight)
    _, value = expand(latent.flip(1), weight)
    return attend(q, join_key(k_nope, rope, "cat"), value, mask, "sdpa")


def _nonlinear_key(q, latent, rope, weight, mask):
    k_nope, value = expand(latent, weight)
    return attend(q, join_key(F.gelu(k_nope), rope, "cat"), value, mask, "sdpa")


def _weight_per_sequence(q, latent, rope, weight, mask):
    """The map changes with the batch (a bmm against per-sequence matrices): not a weight to fold."""
    per_sequence = weight[0][None].expand(BATCH, -1, -1) * torch.arange(1, BATCH + 1.0)[:, None, None]
    kv = torch.bmm(latent[:, :, 0], per_sequence.transpose(1, 2))
    kv = kv.reshape(BATCH, CAPACITY, HEADS, NOPE + VALUE).transpose(1, 2)
    k_nope, value = torch.split(kv, [NOPE, VALUE], dim=-1)
    return attend(q, join_key(k_nope, rope, "cat"), value, mask, "sdpa")


def _rope_per_head(q, latent, rope, weight, mask):
    """The key's other part differs per head: not one shared rope key."""
    k_nope, value = expand(latent, weight)
    k_rope = rope[:, None] * torch.arange(1, HEADS + 1.0)[None, :, None, None]
    return attend(q, torch.cat([k_nope, k_rope], dim=-1), value, mask, "sdpa")


@pytest.mark.parametrize("fn, reason, fix", [
    (_different_latents, "different latents", "the same cached latent"),
    (_nonlinear_key, "K is not a product of the latent", "a linear map of the cached latent"),
    (_weight_per_sequence, "not a weight", "one per-head linear map of the cached latent"),
    (_rope_per_head, "varies across heads", "one rope key shared by all heads"),
])
def test_not_an_exact_expansion_stays_expanded(fn, reason, fix):
    inputs = make_inputs(1)
    result = run_pass(fn, *inputs)
    assert_close(result.output, fn(*inputs), tol=1e-4)
    [record] = result.records
    assert record.kind == "mha" and not record.form.endswith("(absorbed)"), str(record)
    assert reason in record.reason and record.reason.startswith("not absorbed"), record.reason
    assert fix in record.reason.split("; to absorb: ", 1)[1], record.reason


def _value_not_a_product(q, latent, rope, weight, mask):
    k_nope, value = expand(latent, weight)
    return attend(q, join_key(k_nope, rope, "cat"), torch.relu(value), mask, "sdpa")


def _rope_from_a_product(q, latent, rope, weight, mask):
    """The rope key itself computed by a product: K joined from two products."""
    k_nope, value = expand(latent, weight)
    mixing = torch.eye(ROPE) * 0.5 + 0.01
    k_rope = (rope @ mixing)[:, None].expand(-1, HEADS, -1, -1)
    return attend(q, torch.cat([k_nope, k_rope], dim=-1), value, mask, "sdpa")


def _two_rope_parts(q, latent, rope, weight, mask):
    k_nope, value = expand(latent, weight)
    first = rope[:, None, :, : ROPE // 2].expand(-1, HEADS, -1, -1)
    second = (rope[:, None, :, ROPE // 2:] * 2).expand(-1, HEADS, -1, -1)
    return attend(q, torch.cat([k_nope, first, second], dim=-1), value, mask, "sdpa")


def _rope_channel_broadcast(q, latent, rope, weight, mask):
    k_nope, value = expand(latent, weight)
    k_rope = rope[:, None, :, :1].expand(-1, HEADS, -1, ROPE)
    return attend(q, torch.cat([k_nope, k_rope], dim=-1), value, mask, "sdpa")


def _rope_at_an_offset(q, latent, rope_and_more, weight, mask):
    k_nope, value = expand(latent, weight)
    k_rope = rope_and_more[:, None, :, 4: 4 + ROPE].expand(-1, HEADS, -1, -1)
    return attend(q, torch.cat([k_nope, k_rope], dim=-1), value, mask, "sdpa")


def _half_precision_weight(q, latent, rope, weight16, mask):
    k_nope, value = expand(latent, weight16.float())
    return attend(q, join_key(k_nope, rope, "cat"), value, mask, "sdpa")


def _key_written_with_a_step(q, latent, rope, weight, mask):
    k_nope, value = expand(latent, weight)
    key = k_nope.new_zeros(k_nope.shape[0], HEADS, CAPACITY, NOPE + ROPE)
    key[..., 0: 2 * NOPE: 2] = k_nope  # interleaved channels
    key[..., 1: 2 * ROPE: 2] = rope[:, None]
    return attend(q, key, value, mask, "sdpa")


def _wider_rope(inputs):
    q, latent, rope, weight, mask = inputs
    return q, latent, torch.cat([rope[..., :4], rope, rope[..., :4]], dim=-1), weight, mask


def _weight_rows_overlap(q, latent, rope, weight_store, mask):
    """Each head's rows of the weight overlap the next head's (a strided view of one buffer)."""
    rows = NOPE + VALUE
    weight = weight_store.as_strided((HEADS, rows, LATENT), (rows // 2 * LATENT, LATENT, 1))
    k_nope, value = torch.split(torch.einsum("bsc,hxc->bhsx", latent[:, :, 0], weight), [NOPE, VALUE], dim=-1)
    return attend(q, join_key(k_nope, rope, "cat"), value, mask, "sdpa")


def _overlapping_weight(inputs):
    q, latent, rope, _, mask = inputs
    store = torch.randn((HEADS + 1) * (NOPE + VALUE) // 2 * LATENT, generator=torch.Generator().manual_seed(1))
    return q, latent, rope, store / LATENT ** 0.5, mask


def _narrow_rope(q, latent, rope, weight, mask):
    """A rope key 8 wide: the expanded op takes its head dim (16 + 8), the latent kernels not its rope dim."""
    k_nope, value = expand(latent, weight)
    key = torch.cat([k_nope, rope[:, None, :, :8].expand(-1, HEADS, -1, -1)], dim=-1)
    return attend(q[..., :NOPE + 8], key, value, mask, "sdpa")


def _weight_in_a_longer_buffer(q, latent, rope, store, mask):
    """The weight is the start of a 1-D buffer whose length is not a multiple of the weight's rows."""
    rows = HEADS * (NOPE + VALUE)
    kv = F.linear(latent[:, :, 0], store[:rows * LATENT].view(rows, LATENT))
    k_nope, value = torch.split(kv.reshape(BATCH, CAPACITY, HEADS, NOPE + VALUE).transpose(1, 2), [NOPE, VALUE], -1)
    return attend(q, join_key(k_nope, rope, "cat"), value, mask, "sdpa")


def _value_across_heads(q, latent, rope, weight, mask):
    """V's columns of each head start 24 into one head's 32 columns and run into the next head's."""
    width = NOPE + VALUE
    kv = F.linear(latent[:, :, 0], weight)  # weight [(HEADS + 1) * width, LATENT]
    k_nope = kv[..., :HEADS * width].view(BATCH, CAPACITY, HEADS, width)[..., :NOPE].transpose(1, 2)
    value = kv[..., 24: 24 + HEADS * width].view(BATCH, CAPACITY, HEADS, width)[..., :VALUE].transpose(1, 2)
    return attend(q, join_key(k_nope, rope, "cat"), value, mask, "sdpa")


def _channels_reordered_differently(q, latent, rope, weight, mask):
    """The product sums over 24 latent channels read as 8 x 3 on the latent side and as 6 x 4 on the weight's."""
    channels = latent[:, :, 0, :24].reshape(BATCH, CAPACITY, 3, 8).transpose(-1, -2).reshape(BATCH, CAPACITY, 24)
    rows = weight[0][:, :24].reshape(-1, 4, 6).transpose(-1, -2).reshape(-1, 24)
    kv = F.linear(channels, rows).reshape(BATCH, CAPACITY, HEADS, NOPE + VALUE).transpose(1, 2)
    k_nope, value = torch.split(kv, [NOPE, VALUE], dim=-1)
    return attend(q, join_key(k_nope, rope, "cat"), value, mask, "sdpa")


def _weight_store(inputs):
    store = torch.randn(HEADS * (NOPE + VALUE) * LATENT + 5, generator=torch.Generator().manual_seed(1))
    return (*inputs[:3], store / LATENT ** 0.5, inputs[4])


def _weight_with_a_spare_head(inputs):
    weight = torch.randn((HEADS + 1) * (NOPE + VALUE), LATENT, generator=torch.Generator().manual_seed(1))
    return (*inputs[:3], weight / LATENT ** 0.5, inputs[4])


@pytest.mark.parametrize("fn, adapt, reason, fix", [
    (_value_not_a_product, None, "V is not one product of the latent", "compute V as one linear map"),
    (_rope_from_a_product, None, "K is joined from 2 products", "one kv_b_proj over the latent"),
    (_two_rope_parts, None, "more than one part besides the latent map", "one rope key shared by all heads"),
    (_rope_channel_broadcast, None, "broadcast along the batch, the key position or its channels",
     "a rope key cached per sequence and position"),
    (_rope_at_an_offset, _wider_rope, "read at an offset", "a tensor of its own"),
    (_half_precision_weight, lambda inputs: (*inputs[:3], inputs[3].half(), inputs[4]),
     "the key weight is torch.float16, the query torch.float32", "in the query's dtype"),
    (_key_written_with_a_step, None, "written with a step", "constant slices along the head dim"),
    (_weight_rows_overlap, _overlapping_weight, "cannot follow which elements of bmm are read",
     "views only (view, reshape, transpose"),
    (_narrow_rope, None, "the absorbed form is unsupported by the op: q_rope has rope dim 8",
     "latent and rope dims the latent kernels take"),
    (_weight_in_a_longer_buffer, _weight_store, "the key weight is read with a stride pattern that cannot be viewed",
     "a view of part of a longer buffer"),
    (_value_across_heads, _weight_with_a_spare_head,
     "the value weight is read in runs that cross its blocks (a run of 16 starting 24 into a block of 32)",
     "within that head's columns"),
    (_channels_reordered_differently, None, "the product computing the value cannot be followed",
     "compute the value as latent @ W"),
])
def test_not_absorbed_notes_say_what_would_absorb(fn, adapt, reason, fix):
    """Section 5 for absorption: the fused expanded site's note says what was seen and what would absorb it."""
    inputs = make_inputs(1)
    inputs = adapt(inputs) if adapt else inputs
    result = run_pass(fn, *inputs)
    assert_close(result.output, fn(*inputs), tol=1e-4)
    [record] = result.records
    assert record.status == "rewritten" and not record.form.endswith("(absorbed)"), str(record)
    assert record.reason.startswith("not absorbed: ") and reason in record.reason, record.reason
    assert fix in record.reason.split("; to absorb: ", 1)[1], record.reason


def test_mask_per_head_is_absorbed_with_it():
    """A mask per head of the expanded MHA: the absorbed op takes it per query head, in the same head order."""
    fn = expanding_attention("cat", "softmax")
    q, latent, rope, weight, _ = make_inputs(1)
    mask = torch.rand(BATCH, HEADS, 1, CAPACITY, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[..., 0] = True
    result = run_pass(fn, q, latent, rope, weight, mask)
    assert_close(result.output, fn(q, latent, rope, weight, mask), tol=1e-4)
    [record] = result.records
    assert (record.status, record.kind, record.mask) == ("rewritten", "mla", "boolean"), str(record)
    assert record.form.endswith("(absorbed)") and len(op_calls(result)) == 1, str(record)


def _softcapped(q, latent, rope, weight, mask):
    """Gemma2's soft cap on the scores of an expanding MLA: the latent kernels do not take it."""
    k_nope, value = expand(latent, weight)
    scores = q @ join_key(k_nope, rope, "cat").transpose(-1, -2) * SCALE
    scores = torch.tanh(scores / 5.0) * 5.0
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ value


def test_softcapped_expansion_stays_expanded():
    inputs = make_inputs(1)
    result = run_pass(_softcapped, *inputs)
    assert_close(result.output, _softcapped(*inputs), tol=1e-4)
    [record] = result.records
    assert record.status == "rewritten" and record.kind == "mha", str(record)
    assert "soft capping" in record.reason and record.reason.startswith("not absorbed"), record.reason
    assert "; to absorb: nothing: the latent kernels take sinks only" in record.reason, record.reason


def _with_sinks(q, latent, rope, weight, mask):
    """GPT-OSS's sinks (a per-head logit column joined to the scores, dropped after the softmax) on an
    expanding MLA: absorbed, the sinks passed to the latent op."""
    k_nope, value = expand(latent, weight)
    scores = q @ join_key(k_nope, rope, "cat").transpose(-1, -2) * SCALE
    scores = scores.masked_fill(~mask, float("-inf"))
    sinks = torch.linspace(-1.0, 1.0, HEADS).reshape(1, HEADS, 1, 1).expand(BATCH, -1, scores.shape[2], -1)
    probs = torch.softmax(torch.cat([scores, sinks], dim=-1), dim=-1)[..., :-1]
    return probs @ value


def test_expansion_with_sinks_is_absorbed():
    inputs = make_inputs(1)
    result = run_pass(_with_sinks, *inputs)
    assert_close(result.output, _with_sinks(*inputs), tol=1e-4)
    [record] = result.records
    assert record.status == "rewritten" and record.kind == "mla", str(record)
    assert record.form.endswith("+sinks (absorbed)") and op_calls(result), str(record)


def test_not_absorbed_note_names_the_line_it_stopped_at():
    """A note on a node away from the site's line names that node's line (the weight product's einsum)."""
    inputs = _overlapping_weight(make_inputs(1))
    [record] = run_pass(_weight_rows_overlap, *inputs).records
    lines, first = inspect.getsourcelines(_weight_rows_overlap)
    line = first + next(i for i, text in enumerate(lines) if "torch.einsum(" in text)
    assert f"(at test_absorb.py:{line} in _weight_rows_overlap)" in record.reason, record.reason


HIDDEN = 64


def _layer_from_its_input(rotate: bool, kv_heads: int):
    """A prompt's step of an ordinary layer: q, K and V all computed from the layer input x (no cache), K rotated
    or not. x is no latent: the site is MHA/GQA, with no "not absorbed" note."""
    generator = torch.Generator().manual_seed(7)
    w_q, w_k, w_v = (torch.randn(HIDDEN, heads * NOPE, generator=generator) * 0.2
                     for heads in (HEADS, kv_heads, kv_heads))
    cos = torch.randn(NOPE, generator=generator)

    def layer(x):
        batch, length, _ = x.shape
        q = (x @ w_q).view(batch, length, HEADS, NOPE).transpose(1, 2)
        k = (x @ w_k).view(batch, length, kv_heads, NOPE).transpose(1, 2)
        if rotate:
            k = k * cos + torch.cat([-k[..., NOPE // 2:], k[..., :NOPE // 2]], dim=-1) * cos
        v = (x @ w_v).view(batch, length, kv_heads, NOPE).transpose(1, 2)
        groups = HEADS // kv_heads
        k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        scores = (q @ k.transpose(-1, -2) * SCALE).masked_fill(~causal, float("-inf"))
        return torch.softmax(scores, dim=-1) @ v

    return layer


@pytest.mark.parametrize("rotate, kv_heads, kind", [(True, 2, "gqa"), (False, HEADS, "mha")])
def test_a_layer_computing_everything_from_its_input_is_not_a_latent(rotate, kv_heads, kind):
    """Before, the rotated GQA layer carried "not absorbed: K is not a product of the latent" and the plain MHA
    layer was absorbed as MLA over x."""
    layer = _layer_from_its_input(rotate, kv_heads)
    x = torch.randn(BATCH, 3, HIDDEN, generator=torch.Generator().manual_seed(8))
    result = run_pass(layer, x)
    assert_close(result.output, layer(x), tol=1e-4)
    [record] = result.records
    assert (record.status, record.kind, record.reason) == ("rewritten", kind, ""), str(record)
    assert not record.form.endswith("(absorbed)"), str(record)


def _two_layers_sharing_a_latent():
    """Two MLA layers reading one latent cache c: layer 1's query depends on c only through layer 0's output
    projection, so c stays a latent for both (the walk from q crosses q's own projection only)."""
    generator = torch.Generator().manual_seed(9)
    w_q = torch.randn(HIDDEN, HEADS * NOPE, generator=generator) / HIDDEN ** 0.5
    w_uk, w_uv = (torch.randn(LATENT, HEADS * NOPE, generator=generator) / LATENT ** 0.5 for _ in range(2))
    w_o = torch.randn(HEADS * NOPE, HIDDEN, generator=generator) / HIDDEN ** 0.5

    def layer(h, c):
        batch, length, _ = h.shape
        q = (h @ w_q).view(batch, length, HEADS, NOPE).transpose(1, 2)
        k, v = ((c @ w).view(batch, -1, HEADS, NOPE).transpose(1, 2) for w in (w_uk, w_uv))
        out = F.scaled_dot_product_attention(q, k, v, scale=SCALE)
        return out.transpose(1, 2).reshape(batch, length, HEADS * NOPE) @ w_o

    def model(h, c):
        h = h + layer(h, c)
        return h + layer(h, c)

    return model


def test_a_latent_shared_by_two_layers_is_absorbed_in_both():
    model = _two_layers_sharing_a_latent()
    h = torch.randn(BATCH, 1, HIDDEN, generator=torch.Generator().manual_seed(10))
    c = torch.randn(BATCH, CAPACITY, LATENT, generator=torch.Generator().manual_seed(11))
    result = run_pass(model, h, c)
    assert_close(result.output, model(h, c), tol=1e-4)
    assert [(r.kind, r.form.endswith("(absorbed)")) for r in result.records] == [("mla", True)] * 2, \
        [str(r) for r in result.records]

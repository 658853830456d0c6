"""The package's reference models (glacompiler.models) under backend="gla".

Their decode already calls the fused op; a user model would write decode attention in plain PyTorch over
its static cache. Here each layer's decode is swapped for such a plain version (glacompiler.demo's: repeat_kv
+ matmul for GQA/MQA, the concatenated key for GTA, the absorbed latent form for MLA/GLA): the gla pass must
recognise every layer, and the logits must equal the package's own (fused-op) decode. A prompt of 20 tokens
is left to Inductor (prefill)."""
import pytest
import torch

import glacompiler
from glacompiler.demo import install_plain_decode
from glacompiler.models import TinyLM
from glacompiler.presets import tiny_config
from test_backend_support import PassHarness, assert_close

BATCH, PROMPT, CAPACITY, DECODE_STEPS = 2, 20, 32, 3


def make_model(variant):
    torch.manual_seed(0)
    model = TinyLM(tiny_config(variant)).eval()
    model.setup_cache(BATCH, CAPACITY)
    return model


def tokens(step):
    return torch.randint(0, 257, (BATCH, 1), generator=torch.Generator().manual_seed(step))


@pytest.mark.parametrize("variant, kind", [("gqa-4", "gqa"), ("mqa", "mqa"), ("gta-4", "gta"), ("mla", "mla"),
                                           ("gla-2", "gla")])
def test_plain_decode_is_rewritten_and_matches_the_fused_op(variant, kind):
    fused, plain = make_model(variant), install_plain_decode(make_model(variant))
    prompt = torch.randint(0, 257, (BATCH, PROMPT), generator=torch.Generator().manual_seed(1))
    fused.prefill(prompt)
    plain.prefill(prompt)
    decode = PassHarness(plain.decode)
    lengths = torch.full((BATCH,), PROMPT, dtype=torch.int32)
    for step in range(DECODE_STEPS):
        lengths = lengths + 1
        assert_close(decode(tokens(step), lengths), fused.decode(tokens(step), lengths), tol=1e-4)
    result = decode.result()
    assert result.statuses == ["rewritten"] * len(plain.layers), result.reasons
    assert {r.kind for r in result.records} == {kind}
    assert result.after["gla"] == len(plain.layers) and result.after["softmax"] == 0
    for ours, theirs in zip(plain.caches, fused.caches):
        for mine, reference in zip(ours.tensors(), theirs.tensors()):
            assert_close(mine, reference, tol=1e-4)


def test_gla_model_under_the_full_backend():
    """GLA-2 with plain decode through torch.compile(backend="gla"): prefill (20 tokens) left to Inductor,
    each decode step rewritten in every layer, one compile per step shape, logits equal to the fused op's."""
    fused, plain = make_model("gla-2"), install_plain_decode(make_model("gla-2"))
    prompt = torch.randint(0, 257, (BATCH, PROMPT), generator=torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    glacompiler.reset_report()
    prefill, decode = torch.compile(plain.prefill, backend="gla"), torch.compile(plain.decode, backend="gla")
    assert_close(prefill(prompt), fused.prefill(prompt), tol=1e-4)
    lengths = torch.full((BATCH,), PROMPT, dtype=torch.int32)
    for step in range(DECODE_STEPS):
        lengths = lengths + 1
        assert_close(decode(tokens(step), lengths), fused.decode(tokens(step), lengths), tol=1e-4)
    records = glacompiler.compile_report()
    prefill_records = [r for r in records if r.status == "skipped"]
    decode_records = [r for r in records if r.status == "rewritten"]
    assert len(prefill_records) == len(plain.layers) and all("prefill" in r.reason for r in prefill_records)
    assert len(decode_records) == len(plain.layers) and all(r.kind == "gla" for r in decode_records)
    spec = decode_records[0].spec
    config = plain.config.attention
    assert (spec.num_q_heads, spec.num_kv_heads, spec.head_dim_q, spec.rope_dim, spec.tied) == (
        config.n_heads, config.n_latent_heads, config.latent_dim, config.rope_dim, True)

"""benchmarks/bench_mask_layouts.py times one problem in several cache layouts: each layout it builds must hold
the same keys, so the op gives the same output for every row (here on the PyTorch CPU path, at small sizes; the
benchmark's last column checks the same on the GPU), GQA and the tied GTA state with its rope key alike."""
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "benchmarks"))
import bench_mask_layouts  # noqa: E402

import glacompiler  # noqa: E402,F401  (registers the op)


@pytest.mark.parametrize("rope_dim", [0, 16], ids=["gqa", "gta"])
def test_every_layout_holds_the_same_keys(rope_dim):
    heads, kv_heads, head_dim, batch, capacity, valid = 8, 2, 32, 2, 128, 100
    q, q_rope, k, v, rope_keys, lengths, mask, key_range = bench_mask_layouts.case_tensors(
        heads, kv_heads, head_dim, rope_dim, batch, capacity, valid, torch.device("cpu"), torch.float32)
    assert (v is None) == (rope_dim > 0)
    op = torch.ops.glacompiler.attention_with_kvcache.default
    outputs = {}
    for name, (k_cache, v_cache, k_rope, seqlens, pages, attn_mask, kv_range) in bench_mask_layouts.layouts(
            k, v, rope_keys, lengths, mask, key_range).items():
        outputs[name] = op(q, k_cache, v_cache, q_rope, k_rope, seqlens, pages, attn_mask, head_dim ** -0.5, True,
                           0, kv_range)[0]
    assert len(outputs) == 5
    first = outputs["sequence-first, lengths"]
    for name, out in outputs.items():
        torch.testing.assert_close(out, first, rtol=0, atol=1e-6, msg=name)
    # Keys past the valid ones are out: filling them changes nothing.
    k[:, :, valid:] = float("nan")
    layout = bench_mask_layouts.layouts(k, v, rope_keys, lengths, mask, key_range)["heads-first view, bool mask + range"]
    k_cache, v_cache, k_rope, seqlens, pages, attn_mask, kv_range = layout
    out = op(q, k_cache, v_cache, q_rope, k_rope, seqlens, pages, attn_mask, head_dim ** -0.5, True, 0, kv_range)[0]
    torch.testing.assert_close(out, first, rtol=0, atol=1e-6)


def test_the_holed_mask_is_not_dense():
    mask = (torch.arange(64) < 50).expand(3, 1, 1, 64).contiguous()
    holed = bench_mask_layouts.holed(mask, 50)
    assert holed.sum().item() == mask.sum().item() - 3
    assert torch.ops.glacompiler.mask_key_range(mask, 3, 64)[2].tolist() == [1, 1, 1]
    assert torch.ops.glacompiler.mask_key_range(holed, 3, 64).tolist() == [[0] * 3, [50] * 3, [0] * 3]


def test_floor_counts_the_tied_state_once():
    assert bench_mask_layouts.valid_cache_bytes(4, 128, 0, 64, 3001, 2) == 64 * 3001 * 2 * 4 * 128 * 2
    assert bench_mask_layouts.valid_cache_bytes(4, 128, 64, 64, 8192, 2) == 64 * 8192 * (4 * 128 + 64) * 2

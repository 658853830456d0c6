"""The compiled kernels on a GPU at real sizes, bf16 and fp16 (`pytest -m gpu` on an H100/H200)."""
import itertools

import pytest
import torch

import glacompiler
from glacompiler.presets import PAPER_SPECS
from glacompiler.problems import check_fa_rule, make_decode_problem, max_error, rounding_atol
from glacompiler.spec import AttentionSpec

pytestmark = pytest.mark.gpu

GPU_SPECS = dict(PAPER_SPECS)
GPU_SPECS.update(
    mha=AttentionSpec.grouped(16, 16, 128),
    mqa=AttentionSpec.grouped(32, 1, 128),
    gqa_odd=AttentionSpec.grouped(12, 4, 96, 80),
    gta_large=AttentionSpec.grouped_tied(16, 4, 96, 48),
)
# (query_len, page_size) pairs: every Lq and every page size appears, without the full product.
LAYOUTS = [(1, 64), (2, 0), (3, 1), (8, 16), (1, 256), (16, 64)]
CAPACITY = 1000  # not a multiple of any key block or page


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name, layout", list(itertools.product(GPU_SPECS, LAYOUTS)))
def test_family_matrix(cuda_device, name, layout, dtype):
    query_len, page_size = layout
    problem = make_decode_problem(
        GPU_SPECS[name], batch=4, query_len=query_len, capacity=CAPACITY, page_size=page_size, dtype=dtype,
        device=cuda_device, seqlens=[0, 1, 517, CAPACITY], generator=torch.Generator().manual_seed(len(name) + query_len),
    )
    for num_splits in (None, 1, 5):
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=num_splits, return_lse=True)
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("mask_rows", ["key", "token", "head"])
@pytest.mark.parametrize("mask", ["bool", "additive"])
@pytest.mark.parametrize("name", ["gqa", "gta", "mla", "gla2"])
def test_masks(cuda_device, name, mask, mask_rows):
    problem = make_decode_problem(
        GPU_SPECS[name], batch=3, query_len=4, capacity=CAPACITY, page_size=64, dtype=torch.bfloat16,
        device=cuda_device, mask=mask, mask_rows=mask_rows, causal=mask_rows == "key",
    )
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
    check_fa_rule(out, lse, problem)


def runs_mask(runs, capacity: int) -> torch.Tensor:
    """A bool mask [B, 1, 1, capacity] allowing one run of keys [lo, hi) per sequence."""
    allowed = torch.zeros(len(runs), 1, 1, capacity, dtype=torch.bool)
    for b, (lo, hi) in enumerate(runs):
        allowed[b, ..., lo:hi] = True
    return allowed


@pytest.mark.parametrize("mask_rows", ["key", "head"])
@pytest.mark.parametrize("mask", ["bool", "additive", "lowest"])
@pytest.mark.parametrize("page_size", [0, 64])
def test_dense_masks(cuda_device, page_size, mask, mask_rows):
    """Masks that allow one run of keys per sequence (a static cache's prefix, a left-padded run): the kernels
    take them by their range and do not read them (mask_key_range's dense flag). Runs start off block
    boundaries; test_kernels_interpreted.py poisons the slots outside them. "lowest": transformers' additive
    mask, torch.finfo(bfloat16).min outside the runs."""
    spec, capacity = AttentionSpec.grouped(32, 8, 128), 1024
    problem = make_decode_problem(spec, batch=4, query_len=1, capacity=capacity, page_size=page_size,
                                  dtype=torch.bfloat16, device=cuda_device, causal=False, seqlens=[capacity] * 4,
                                  generator=torch.Generator().manual_seed(page_size + len(mask + mask_rows)))
    runs = [(0, 1024), (0, 517), (77, 1000), (300, 301)]
    allowed = runs_mask(runs, capacity)
    if mask_rows == "head":
        allowed = allowed.expand(4, spec.num_q_heads, 1, capacity).contiguous()
    masked = torch.finfo(torch.bfloat16).min if mask == "lowest" else float("-inf")
    attn_mask = allowed if mask == "bool" else torch.where(allowed, 0.0, masked).to(torch.bfloat16)
    problem.kwargs["attn_mask"] = attn_mask.to(cuda_device)
    assert torch.ops.glacompiler.mask_key_range(problem.kwargs["attn_mask"], 4, capacity)[2].tolist() == [1] * 4
    for num_splits in (None, 1, 4):  # (keys before a run would change the result: the data is random)
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=num_splits, return_lse=True)
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("name", ["gqa", "gta"])
def test_dense_and_holed_sequences_in_one_call(cuda_device, name):
    """The two passes of a masked call on one batch, compiled: sequences 0 and 2 dense runs (the dense pass,
    mask not read), 1 and 3 with holes (the sparse pass), in bf16 at the paper's GQA / GTA widths, contiguous
    and paged, with and without splits."""
    capacity, runs = 1024, [(0, 1024), (5, 900), (77, 1000), (0, 333)]
    allowed = runs_mask(runs, capacity)
    allowed[1, ..., 100:300] = False
    allowed[3, ..., 64:65] = False
    mask = allowed.to(cuda_device)
    assert torch.ops.glacompiler.mask_key_range(mask, 4, capacity)[2].tolist() == [1, 0, 1, 0]
    for page_size in (0, 64):
        problem = make_decode_problem(GPU_SPECS[name], batch=4, query_len=1, capacity=capacity,
                                      page_size=page_size, dtype=torch.bfloat16, device=cuda_device, causal=False,
                                      seqlens=[capacity] * 4, generator=torch.Generator().manual_seed(page_size))
        problem.kwargs["attn_mask"] = mask
        for num_splits in (1, 4):
            out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=num_splits, return_lse=True)
            check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("name", ["gqa", "gta", "gla2", "mla"])
def test_a_row_of_lowest_fills_only_is_read_whole(cuda_device, name):
    """bf16 masks filled with torch.finfo(bfloat16).min (-3.4e38, as transformers writes them): a row of such fills
    only averages its values, as eager attention does; in float32 the fill times log2(e) overflowed to -inf and the
    row came out empty. Both kernel families (the paper's specs: portable GQA/GTA, Hopper GLA-2/MLA); FlashAttention's
    rule on every output, and on the LSE of rows that saw a real key. The row of fills only in one KV split: over
    several (a tuned table's config), each split's mean weighs alike, its key count lost to float32 at -3e38 in its LSE
    (README), so there the rule holds on the other rows."""
    fill = torch.finfo(torch.bfloat16).min
    problem = make_decode_problem(GPU_SPECS[name], batch=3, query_len=1, capacity=CAPACITY, page_size=64,
                                  dtype=torch.bfloat16, device=cuda_device, causal=False, seqlens=[CAPACITY] * 3,
                                  generator=torch.Generator().manual_seed(11))
    capacity = problem.kwargs["page_table"].shape[1] * 64  # (whole pages: the logical capacity a mask spans)
    mask = torch.zeros(3, 1, 1, capacity, dtype=torch.bfloat16, device=cuda_device)
    mask[0] = fill
    mask[1, ..., ::2] = fill
    mask[2, ..., capacity // 2:] = fill
    problem.kwargs["attn_mask"] = mask
    ref_out, ref_lse = problem.reference(torch.float64)
    pt_out, pt_lse = problem.reference(torch.bfloat16)
    atol = rounding_atol(ref_out, torch.bfloat16)
    for num_splits, rows in ((1, slice(0, 3)), (None, slice(1, 3))):  # None: the table's or the heuristic's config
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=num_splits, return_lse=True)
        assert max_error(out[rows], ref_out[rows].to(out.device)) <= 2 * max_error(pt_out[rows], ref_out[rows]) + atol
        seen = ref_lse[1:].to(lse.device)
        assert max_error(lse[1:], seen) <= 2 * max_error(pt_lse[1:], ref_lse[1:]) + 1e-3
        assert torch.isfinite(lse[0]).all() and (lse[0] < -1e30).all()


def test_cuda_graph_capture_and_replay(cuda_device):
    problem = make_decode_problem(GPU_SPECS["gla2"], batch=8, query_len=1, capacity=CAPACITY, page_size=64,
                                  dtype=torch.bfloat16, device=cuda_device)
    glacompiler.attention_with_kvcache(**problem.kwargs)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = glacompiler.attention_with_kvcache(**problem.kwargs)
    problem.kwargs["q"].copy_(torch.randn_like(problem.kwargs["q"]))
    graph.replay()
    torch.cuda.synchronize()
    check_fa_rule(out, glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)[1], problem)


@pytest.mark.parametrize("mask", [None, "bool"])
def test_repeated_calls_take_the_direct_launch_path(cuda_device, mask):
    """The second and later calls of a specialisation skip triton's JIT (kernels/common/triton_launch.py): fresh
    data each call, and a q that loses 16-byte alignment must get its own binary, not the aligned one."""
    from glacompiler.kernels.common import triton_launch

    spec = GPU_SPECS["gla2"]
    for step in range(3):
        problem = make_decode_problem(spec, batch=4, query_len=2, capacity=CAPACITY, page_size=64,
                                      dtype=torch.bfloat16, device=cuda_device, mask=mask, mask_rows="key",
                                      causal=mask is None, generator=torch.Generator().manual_seed(step))
        if step == 2:
            q = problem.kwargs["q"]
            shifted = torch.empty(q.numel() + 1, dtype=q.dtype, device=q.device)[1:].view(q.shape)
            shifted.copy_(q)
            assert shifted.data_ptr() % 16 != 0
            problem.kwargs["q"] = shifted
        remembered = len(triton_launch._compiled)
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
        check_fa_rule(out, lse, problem)
        if step == 1:
            assert len(triton_launch._compiled) == remembered  # nothing new: every launch was direct
    assert triton_launch._direct_launch_enabled

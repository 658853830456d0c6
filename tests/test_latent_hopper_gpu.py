"""The Hopper latent kernel on an H100/H200 against the float64 reference (`pytest -m gpu`), bf16 and fp16:
every case first asserts that the op really dispatches to it, so a change in the dispatch rules cannot turn
these into tests of the portable kernels."""
import pytest
import torch

import glacompiler
from glacompiler.kernels import KernelCall, family_reasons
from glacompiler.kernels.common.log2_domain import LOG2_E
from glacompiler.kernels.latent_hopper import LatentHopperConfig
from glacompiler.kernels.latent_hopper.config import RESCALE_SLACK
from glacompiler.op.validation import validate_inputs
from glacompiler.presets import PAPER_SPECS
from glacompiler.problems import check_fa_rule, make_decode_problem
from glacompiler.reference import logical_cache
from glacompiler.spec import AttentionSpec

pytestmark = pytest.mark.gpu

SPECS = {
    "mla": PAPER_SPECS["mla"],
    "gla2": PAPER_SPECS["gla2"],  # 64 rows per latent head at Lq 1
    "mla_rope48": AttentionSpec.latent(32, 1, 512, 48),  # rope key narrower than its 64-wide tile
    "gla_rope16": AttentionSpec.latent(48, 1, 256, 16),  # 48 packed rows: a partly empty tile
    "gla2_xl": AttentionSpec.latent(16, 2, 256, 64),  # the paper's XL GLA-2: 8 rows per latent head
}
CAPACITY = 1000  # not a multiple of the 64-key block: every full sequence ends in a partial block


@pytest.fixture
def hopper(cuda_device):
    if torch.cuda.get_device_capability() != (9, 0):
        pytest.skip("the Hopper latent kernel needs an sm_90 GPU")
    return cuda_device


def hopper_problem(device, name, query_len, page_size, dtype, seed, mask=None, mask_rows="key"):
    problem = make_decode_problem(
        SPECS[name], batch=4, query_len=query_len, capacity=CAPACITY, page_size=page_size, dtype=dtype,
        device=device, seqlens=[0, 1, 517, CAPACITY], generator=torch.Generator().manual_seed(seed),
        mask=mask, mask_rows=mask_rows,
    )
    assert_takes_hopper_kernel(problem)
    return problem


def assert_takes_hopper_kernel(problem):
    kw = problem.kwargs
    spec, shape = validate_inputs(kw["q"], kw["k_cache"], kw["v_cache"], kw["q_rope"], kw["k_rope_cache"],
                                  kw["cache_seqlens"], kw["page_table"], kw["attn_mask"], None, None)
    call = KernelCall(kw["q"], kw["k_cache"], kw["v_cache"], kw["q_rope"], kw["k_rope_cache"], kw["cache_seqlens"],
                      kw["page_table"], kw["attn_mask"], 1.0, True)
    reason = family_reasons(spec, shape, call)["latent_hopper"]
    assert reason is None, f"the op would not take the Hopper latent kernel: {reason}"


# (spec, query_len, page_size): pages of 64 (one block each), 256 (four blocks each), 16 and 32 (a copy per
# page), contiguous; Lq up to 16. GLA-2 runs 64-row programs of one warpgroup (one_warpgroup), with 200 rows at
# Lq 3 (a partly empty last row block).
CASES = [("mla", 1, 64), ("mla", 2, 0), ("mla", 16, 256), ("mla", 3, 64), ("mla", 1, 16), ("mla", 2, 32),
         ("gla2", 1, 64), ("gla2", 1, 0), ("gla2", 2, 64), ("gla2", 3, 0), ("gla2", 16, 128), ("gla2", 2, 16),
         ("mla_rope48", 4, 128), ("gla_rope16", 1, 32), ("gla2_xl", 1, 64), ("gla2_xl", 3, 16)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name, query_len, page_size", CASES)
def test_matches_reference(hopper, name, query_len, page_size, dtype):
    problem = hopper_problem(hopper, name, query_len, page_size, dtype, seed=query_len + page_size)
    for num_splits in (None, 1, 5):
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=num_splits, return_lse=True)
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("mask", ["bool", "additive"])
@pytest.mark.parametrize("name, query_len, page_size", [("mla", 1, 64), ("mla", 2, 0), ("gla2", 2, 128), ("mla", 1, 16)])
def test_key_masks(hopper, name, query_len, page_size, mask):
    # One random key mask per sequence ([B, 1, 1, S], 70% kept, the first key ruled out), with the lengths
    # and, at Lq 2, causality on top.
    problem = hopper_problem(hopper, name, query_len, page_size, torch.bfloat16, seed=11, mask=mask)
    for num_splits in (None, 3):
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=num_splits, return_lse=True)
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("mask", ["bool", "additive"])
@pytest.mark.parametrize("name, query_len, mask_rows", [("mla", 3, "token"), ("mla", 2, "head"), ("gla2", 2, "token"),
                                                        ("gla2", 1, "head")])
def test_per_row_masks(hopper, name, query_len, mask_rows, mask):
    # A mask per draft token ([B, 1, Lq, S], speculative decoding) or per head and token ([B, Hq, Lq, S]):
    # 70% kept at random, with the lengths and causality on top. GLA-2 at Lq 2 runs the 128-row tiles.
    problem = hopper_problem(hopper, name, query_len, 64, torch.bfloat16, seed=13, mask=mask, mask_rows=mask_rows)
    for num_splits in (None, 3):
        out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, num_splits=num_splits, return_lse=True)
        check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("page_size", [64, 0])
def test_key_mask_without_lengths(hopper, page_size):
    # What backend="gla" passes for a static cache: a mask and no cache_seqlens; the mask's key range bounds
    # the blocks visited (here every slot holds data, so the reference can read them all).
    problem = make_decode_problem(SPECS["mla"], batch=3, query_len=1, capacity=CAPACITY, page_size=page_size,
                                  dtype=torch.bfloat16, device=hopper, seqlens=[CAPACITY] * 3, poison=False,
                                  mask="bool", mask_rows="key", generator=torch.Generator().manual_seed(2))
    problem.kwargs["cache_seqlens"] = None
    problem.kwargs["attn_mask"][1, ..., 600:] = False  # a shorter prefix: fewer key blocks for sequence 1
    assert_takes_hopper_kernel(problem)
    out, lse = glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True)
    check_fa_rule(out, lse, problem)


def test_more_splits_than_key_blocks(hopper):
    # 16 splits of a 1000-key cache: most splits of the short sequences are empty (lse -inf, out 0).
    problem = hopper_problem(hopper, "mla", 1, 64, torch.bfloat16, seed=3)
    out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=LatentHopperConfig(num_splits=16))
    check_fa_rule(out, lse, problem)


def test_cuda_graph_replay_with_fresh_lengths(hopper):
    problem = hopper_problem(hopper, "mla", 1, 64, torch.bfloat16, seed=5)
    kw = problem.kwargs
    glacompiler.attention_with_kvcache(**kw)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, lse = glacompiler.attention_with_kvcache(**kw, return_lse=True)
    kw["q"].copy_(torch.randn_like(kw["q"]))
    kw["cache_seqlens"].copy_(torch.tensor([0, 1, 300, 999], dtype=torch.int32))  # shorter: pages stay valid
    graph.replay()
    torch.cuda.synchronize()
    check_fa_rule(out, lse, problem)


# 128-key blocks (LatentHopperConfig.block_n) on the 64-row tile of latents up to 256 wide: pages of 64 and 256
# (two copies a block, or one page holding two blocks), 16 (eight copies), contiguous; key and per-row masks; a
# 48-row and an 8-row latent head (sinks and windows: test_extensions_gpu.py).
@pytest.mark.parametrize("name, query_len, page_size, mask, mask_rows", [
    ("gla2", 1, 64, None, "key"), ("gla2", 1, 0, "bool", "key"), ("gla2", 1, 256, "additive", "head"),
    ("gla2", 1, 16, None, "key"), ("gla_rope16", 1, 32, "bool", "key"), ("gla2_xl", 4, 64, "bool", "token"),
])
def test_wide_key_blocks_match_reference(hopper, name, query_len, page_size, mask, mask_rows):
    problem = hopper_problem(hopper, name, query_len, page_size, torch.bfloat16, seed=7 + page_size, mask=mask,
                             mask_rows=mask_rows)
    for num_splits in (1, 3, 16):
        out, lse = glacompiler.attention_with_kvcache_config(
            **problem.kwargs, config=LatentHopperConfig(num_splits=num_splits, block_n=128))
        check_fa_rule(out, lse, problem)



# The row-owned tiles with explicit configs: the 128-row tile of two warpgroups (the heuristic no longer picks it
# for GLA, a tuned table may), and programs of one warpgroup on masks per row or token, small pages, splits, and
# latent heads of 48 and 32 rows (a partly empty row block).
@pytest.mark.parametrize("name, query_len, page_size, mask, mask_rows, config", [
    ("gla2", 2, 64, None, "key", LatentHopperConfig(1, True, 64)),
    ("gla2", 3, 16, "bool", "token", LatentHopperConfig(3, True, 64)),
    ("gla2", 3, 0, "additive", "head", LatentHopperConfig(2, True, 64, one_warpgroup=True)),
    ("gla2", 1, 16, "bool", "key", LatentHopperConfig(5, True, 64, one_warpgroup=True)),
    ("gla_rope16", 1, 32, None, "key", LatentHopperConfig(1, True, 64, one_warpgroup=True)),
    ("gla2_xl", 4, 64, "bool", "token", LatentHopperConfig(3, True, 64, one_warpgroup=True)),
    # the lazy rescale on both row-owned tiles
    ("gla2", 2, 0, "additive", "head", LatentHopperConfig(2, True, 64, lazy_rescale=True)),
    ("gla2", 3, 0, "additive", "head", LatentHopperConfig(2, True, 64, one_warpgroup=True, lazy_rescale=True)),
    ("gla2_xl", 4, 64, "bool", "token", LatentHopperConfig(3, True, 64, one_warpgroup=True, lazy_rescale=True)),
])
def test_row_owned_tiles_match_reference(hopper, name, query_len, page_size, mask, mask_rows, config):
    problem = hopper_problem(hopper, name, query_len, page_size, torch.bfloat16, seed=21 + query_len, mask=mask,
                             mask_rows=mask_rows)
    out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
    check_fa_rule(out, lse, problem)


# The lazy rescale where row maxima jump: keys scaled page by page (1x to 8x) make a later block's max pass the one
# P was taken against by far more than the slack, over and over, so the rescale branch runs between skipped ones.
@pytest.mark.parametrize("config", [LatentHopperConfig(2, True, 64, one_warpgroup=True, lazy_rescale=True),
                                    LatentHopperConfig(3, True, 64, lazy_rescale=True)])
def test_lazy_rescale_follows_maxima_that_jump(hopper, config):
    problem = hopper_problem(hopper, "gla2", 2, 64, torch.bfloat16, seed=41)
    scale_keys_by_page(problem)
    # Rows' block maxima pass the slack 25 times on this data (0 unscaled), so the tile's rescale branch runs.
    assert max_jumps_past_slack(problem) >= 10
    out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
    check_fa_rule(out, lse, problem)


def scale_keys_by_page(problem, seed=5):
    k_cache = problem.kwargs["k_cache"]
    factor = 1 + 7 * torch.rand(k_cache.shape[0], 1, 1, 1, generator=torch.Generator().manual_seed(seed))
    problem.kwargs["k_cache"] = k_cache * factor.to(k_cache.device, k_cache.dtype)


def max_jumps_past_slack(problem, block=64, slack=RESCALE_SLACK):
    """How often, over the longest sequence's rows, a 64-key block's score max (log2 domain) passes the max of the
    blocks before it by more than the slack: where the lazy rescale must rescale."""
    kw = problem.kwargs
    seq = int(kw["cache_seqlens"].argmax())
    length = int(kw["cache_seqlens"][seq]) // block * block
    keys = logical_cache(kw["k_cache"], kw["page_table"], kw["cache_seqlens"])[seq, :length].float()
    rope = logical_cache(kw["k_rope_cache"], kw["page_table"], kw["cache_seqlens"])[seq, :length].float()
    q, q_rope = kw["q"][seq].float(), kw["q_rope"][seq].float()
    keys = keys.repeat_interleave(q.shape[1] // keys.shape[1], dim=1)
    scores = torch.einsum("thd,shd->ths", q, keys) + torch.einsum("thr,sr->ths", q_rope, rope)
    scores = scores * (q.shape[-1] + q_rope.shape[-1]) ** -0.5 * LOG2_E
    block_max = scores.unflatten(-1, (-1, block)).amax(-1)
    before = block_max.cummax(-1).values[..., :-1]
    return int((block_max[..., 1:] > before + slack).sum())


# The warp-specialised form of the shared 64-row tile in both schedules: one warpgroup scores whole blocks and runs
# the softmax while the other accumulates the right half of the output and refills the stages; or, alternating, each
# scores every other key block (P crosses between them rescaled to the pair's common max; stages refilled by halves).
# Masks per key, token and head, pages of 16 to 256 and contiguous caches, splits (empty ones among them: a length of
# 0 and of 1; with 16 splits, single-block ones), odd and even block counts (lengths 1, 517 and 1000 end in blocks 1,
# 9 and 16), Lq up to 16, a rope key narrower than its tile, a 256-wide latent and a partly empty row block.
@pytest.mark.parametrize("alternating", [False, True])
@pytest.mark.parametrize("name, query_len, page_size, mask, mask_rows, num_splits, dtype", [
    ("mla", 1, 64, None, "key", 1, torch.bfloat16),
    ("mla", 1, 64, None, "key", 16, torch.bfloat16),
    ("mla", 2, 0, None, "key", 5, torch.float16),
    ("mla", 3, 16, "bool", "token", 3, torch.bfloat16),
    ("mla", 4, 32, "additive", "head", 2, torch.bfloat16),
    ("mla", 16, 256, "bool", "key", 1, torch.float16),
    ("mla_rope48", 4, 128, None, "key", 4, torch.bfloat16),
    ("gla2", 2, 64, "bool", "token", 2, torch.bfloat16),
    ("gla_rope16", 1, 32, None, "key", 1, torch.bfloat16),
])
def test_warp_specialized_tile_matches_reference(hopper, name, query_len, page_size, mask, mask_rows, num_splits,
                                                 dtype, alternating):
    problem = hopper_problem(hopper, name, query_len, page_size, dtype, seed=31 + query_len, mask=mask,
                             mask_rows=mask_rows)
    config = LatentHopperConfig(num_splits, warp_specialized=True, alternating=alternating)
    out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
    check_fa_rule(out, lse, problem)


# The ping-pong tile (the 128-row tile warp-specialised: two row groups taking turns, a refill warp): splits with
# empty and single-block ones (lengths 0 and 1; 16 splits), odd and even block counts, 128-key blocks (of 16-key
# pages: eight copies a block from the refill warp), pages of 16 to 256 and contiguous caches, masks per key, token
# and head, the lazy rescale, fp16, a second row group past the last row (Lq 1: 64 rows; Lq 3: 192 rows, a
# half-empty second program) and latent heads of 48 and 8 rows (sinks and windows: test_extensions_gpu.py).
@pytest.mark.parametrize("name, query_len, page_size, mask, mask_rows, config, dtype", [
    ("gla2", 2, 64, None, "key", LatentHopperConfig(1, True, 64, warp_specialized=True), torch.bfloat16),
    ("gla2", 2, 64, None, "key", LatentHopperConfig(16, True, 64, warp_specialized=True), torch.bfloat16),
    ("gla2", 2, 16, None, "key", LatentHopperConfig(2, True, 128, warp_specialized=True), torch.bfloat16),
    ("gla2", 4, 0, None, "key", LatentHopperConfig(3, True, 128, warp_specialized=True), torch.float16),
    ("gla2", 3, 16, "bool", "token", LatentHopperConfig(2, True, 64, warp_specialized=True), torch.bfloat16),
    ("gla2", 2, 256, "additive", "head", LatentHopperConfig(5, True, 128, warp_specialized=True), torch.bfloat16),
    ("gla2", 1, 64, None, "key", LatentHopperConfig(2, True, 64, warp_specialized=True), torch.bfloat16),
    ("gla2", 2, 32, "additive", "head", LatentHopperConfig(2, True, 64, warp_specialized=True, lazy_rescale=True),
     torch.bfloat16),
    ("gla_rope16", 1, 32, None, "key", LatentHopperConfig(1, True, 64, warp_specialized=True), torch.bfloat16),
    ("gla2_xl", 4, 64, "bool", "token", LatentHopperConfig(3, True, 64, warp_specialized=True), torch.float16),
])
def test_ping_pong_tile_matches_reference(hopper, name, query_len, page_size, mask, mask_rows, config, dtype):
    problem = hopper_problem(hopper, name, query_len, page_size, dtype, seed=51 + query_len, mask=mask,
                             mask_rows=mask_rows)
    out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
    check_fa_rule(out, lse, problem)


# The ping-pong tile where row maxima jump (the lazy rescale's branch runs between skipped ones).
def test_ping_pong_lazy_rescale_follows_maxima_that_jump(hopper):
    problem = hopper_problem(hopper, "gla2", 2, 64, torch.bfloat16, seed=41)
    scale_keys_by_page(problem)
    assert max_jumps_past_slack(problem) >= 10
    out, lse = glacompiler.attention_with_kvcache_config(
        **problem.kwargs, config=LatentHopperConfig(3, True, 64, warp_specialized=True, lazy_rescale=True))
    check_fa_rule(out, lse, problem)


# The shared 64-row tile's other form (both warpgroups score half of each block's keys): the heuristic no longer
# takes it, explicit configs and the tuner may.
@pytest.mark.parametrize("name, query_len, page_size, mask, mask_rows, num_splits, block_n", [
    ("mla", 1, 64, None, "key", 1, 64),
    ("mla", 3, 16, "bool", "token", 3, 64),
    ("gla2", 2, 0, "additive", "head", 2, 128),
    ("gla_rope16", 1, 32, "bool", "key", 5, 128),
])
def test_shared_tile_without_warp_specialization_matches_reference(hopper, name, query_len, page_size, mask,
                                                                   mask_rows, num_splits, block_n):
    problem = hopper_problem(hopper, name, query_len, page_size, torch.bfloat16, seed=41 + query_len, mask=mask,
                             mask_rows=mask_rows)
    config = LatentHopperConfig(num_splits, block_n=block_n, warp_specialized=False)
    out, lse = glacompiler.attention_with_kvcache_config(**problem.kwargs, config=config)
    check_fa_rule(out, lse, problem)


@pytest.mark.parametrize("page_size, mask", [(0, None), (64, None), (64, "bool")])
def test_repeats_launch_the_binary_with_each_caches_descriptors(hopper, page_size, mask):
    """Repeats with the same metadata but other caches (the layers of a model; a cache freed and another made,
    often at its address): each call reads its own caches. Where binary_launch knows this Triton's launcher
    (triton 3.6's), the repeats call the C launcher directly and remember one encoding per cache address."""
    from glacompiler.kernels.common.binary_launch import layout_known
    from glacompiler.op import prepared

    prepared.clear_prepared_calls()
    problems = [hopper_problem(hopper, "gla2", 1, page_size, torch.bfloat16, seed=seed, mask=mask)
                for seed in (11, 12)]
    for problem in problems + problems:
        check_fa_rule(*glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True), problem)
    (plan,) = [call.plan for call in prepared._prepared.values()]
    launch = plan.launch
    cache_arguments = ((2, "k_cache"), (3, "k_rope_cache"))
    if not layout_known(launch.compiled):
        assert launch.binary is None
        return
    assert launch.binary is not None
    assert set(launch.binary.encodings) == {(position, problem.kwargs[name].data_ptr()) for problem in problems
                                            for position, name in cache_arguments}
    freed = {(position, problems[1].kwargs[name].data_ptr()) for position, name in cache_arguments}
    del problems[1]
    torch.cuda.empty_cache()
    problems.append(hopper_problem(hopper, "gla2", 1, page_size, torch.bfloat16, seed=13, mask=mask))
    for problem in problems:
        check_fa_rule(*glacompiler.attention_with_kvcache(**problem.kwargs, return_lse=True), problem)
    new = {(position, problems[1].kwargs[name].data_ptr()) for position, name in cache_arguments}
    # An address met again reuses its encoding (the plan fixes all else); a new one adds an entry.
    assert set(launch.binary.encodings) == {(position, problem.kwargs[name].data_ptr()) for problem in problems
                                            for position, name in cache_arguments} | freed
    assert len(launch.binary.encodings) == 4 + len(new - freed)

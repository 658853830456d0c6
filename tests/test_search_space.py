"""Tuning search spaces: the portable kernels' (kernels/portable/search_space.py) and the Hopper latent
kernel's, built through the family interface the tuner uses."""
import pytest

from glacompiler.kernels.common.splits import HEURISTIC_MAX_SPLITS, MAX_SPLITS
from glacompiler.kernels.latent_hopper import LATENT_HOPPER, LatentHopperConfig
from glacompiler.kernels.portable import PORTABLE
from glacompiler.kernels.portable.config import PortableConfig, heuristic_config, pipeline_stages
from glacompiler.kernels.portable.search_space import build_search_space
from glacompiler.presets import PAPER_SPECS
from glacompiler.spec import AttentionSpec, ProblemShape
from tuning_doubles import GQA, H100


@pytest.mark.parametrize("name", sorted(PAPER_SPECS))
@pytest.mark.parametrize("batch,capacity,query_len", [(1, 1024, 1), (128, 32768, 4), (8, 8192, 2)])
def test_space_holds_only_valid_configs(name, batch, capacity, query_len):
    spec = PAPER_SPECS[name]
    shape = ProblemShape(batch=batch, query_len=query_len, capacity=capacity, page_size=64)
    default = heuristic_config(spec, batch, capacity, query_len, H100.multiprocessors)
    space = build_search_space(spec, shape, H100.multiprocessors, include=[default])
    assert space.contains(default)
    rows = spec.group_size * query_len
    assert min(space.values("block_m")) >= 16
    assert max(space.values("block_m")) <= max(16, default.block_m, 1 << (rows - 1).bit_length())
    assert max(space.values("num_splits")) <= MAX_SPLITS
    assert max(space.values("block_n")) <= capacity
    for value in space.values("dv_split"):
        assert value == 1 or spec.head_dim_v // value >= 32
    # Every combination is a config the kernel accepts (PortableConfig validates its fields).
    for config in space.configs(default):
        assert isinstance(config, PortableConfig)


def test_space_scales_splits_with_parallelism():
    small = build_search_space(GQA, ProblemShape(1, 1, 32768, 64), 132)
    large = build_search_space(GQA, ProblemShape(128, 1, 32768, 64), 132)
    short = build_search_space(GQA, ProblemShape(1, 1, 128, 64), 132)
    assert max(small.values("num_splits")) >= 32  # 8 programs on 132 SMs: splits are the parallelism
    assert max(large.values("num_splits")) <= 2  # 1024 programs already fill the GPU
    assert max(short.values("num_splits")) <= 2  # 128 keys: no split shorter than 64 keys


def test_few_programs_over_a_long_cache_may_take_up_to_max_splits():
    """GTA's 4 KV heads over one 64K-key sequence: the tuner may reach MAX_SPLITS (128 splits ran 1.35x faster than
    64 on an H200), while the heuristic stops at HEURISTIC_MAX_SPLITS."""
    gta = AttentionSpec.grouped_tied(16, 4, 128, 64)
    space = build_search_space(gta, ProblemShape(1, 1, 65536, 64), 132)
    assert MAX_SPLITS in space.values("num_splits")
    assert heuristic_config(gta, 1, 65536, 1, 132).num_splits == HEURISTIC_MAX_SPLITS  # its longest useful


@pytest.mark.parametrize("spec", [*(PAPER_SPECS[name] for name in sorted(PAPER_SPECS)),
                                  AttentionSpec.grouped(32, 8, 64), AttentionSpec.grouped(32, 8, 192)],
                         ids=[*sorted(PAPER_SPECS), "gqa-d64", "gqa-d192"])
def test_two_warps_only_for_narrow_accumulators(spec):
    """2 warps is a choice for values of 128 columns or fewer (GQA, GTA), not for wider ones (d 192, latents)."""
    space = build_search_space(spec, ProblemShape(batch=8, query_len=4, capacity=8192, page_size=64), 132)
    assert (2 in space.values("num_warps")) == (spec.head_dim_v <= 128)
    assert {4, 8} <= set(space.values("num_warps"))


def test_portable_family_builds_the_same_space():
    shape = ProblemShape(batch=8, query_len=2, capacity=8192, page_size=64)
    default = PORTABLE.heuristic_config(GQA, shape, H100.multiprocessors)
    assert PORTABLE.search_space(GQA, shape, H100.multiprocessors, [default]) == \
        build_search_space(GQA, shape, H100.multiprocessors, [default])


@pytest.mark.parametrize("name", ["mla", "gla2", "gla8"])
def test_hopper_space_holds_split_counts_and_row_tiles(name):
    spec = PAPER_SPECS[name]
    shape = ProblemShape(batch=1, query_len=2, capacity=32768, page_size=64)
    default = LATENT_HOPPER.heuristic_config(spec, shape, H100.multiprocessors)
    space = LATENT_HOPPER.search_space(spec, shape, H100.multiprocessors, [default])
    assert space.contains(default) and max(space.values("num_splits")) >= 32  # one sequence: splits fill the GPU
    # MLA's 512-wide latent only fits 64-row tiles; GLA's 256-wide one also 128-row tiles.
    assert space.values("row_split") == ((False,) if spec.head_dim_k > 256 else (False, True))
    # GLA's also 128-key blocks, and programs of one warpgroup; the 128-row tile in step and one warpgroup have no
    # room for 128-key blocks (the ping-pong tile has), one warpgroup is a form of the row-owned tile, and so is the
    # lazy rescale: the resource check prunes those.
    assert space.values("block_n") == ((64,) if spec.head_dim_k > 256 else (64, 128))
    assert space.values("one_warpgroup") == ((False,) if spec.head_dim_k > 256 else (False, True))
    # The shared 64-row tile in both forms; warp-specialised is a form of it and of the 128-row tile (ping-pong),
    # alternating a schedule of the shared tile's with 64-key blocks.
    assert space.values("warp_specialized") == (False, True)
    assert space.values("alternating") == (False, True)
    assert space.values("lazy_rescale") == ((False,) if spec.head_dim_k > 256 else (False, True))
    for config in space.configs(default):
        assert isinstance(config, LatentHopperConfig)
        check = LATENT_HOPPER.resource_check(spec, config, H100)
        ping_pong = config.row_split and config.warp_specialized and not config.one_warpgroup
        invalid = ((config.row_split and config.block_n == 128 and not ping_pong)
                   or (config.one_warpgroup and not config.row_split)
                   or (config.lazy_rescale and not config.row_split)
                   or (config.one_warpgroup and config.warp_specialized)
                   or (config.alternating and (not config.warp_specialized or config.block_n == 128
                                               or config.row_split)))
        assert (check.excess > 0) == invalid, check
    assert LATENT_HOPPER.resource_check(PAPER_SPECS["mla"], LatentHopperConfig(row_split=True), H100).excess > 0


def test_hopper_space_takes_a_config_with_open_choices_as_it_runs():
    """An entry tuned before the alternating schedule was a choice (alternating None) joins the space resolved."""
    spec, shape = PAPER_SPECS["mla"], ProblemShape(batch=8, query_len=1, capacity=8192, page_size=64)
    tuned_before = LatentHopperConfig(4, False, 64, warp_specialized=True)
    space = LATENT_HOPPER.search_space(spec, shape, H100.multiprocessors, [tuned_before])
    assert space.contains(LatentHopperConfig(4, False, 64, warp_specialized=True, alternating=False))


def test_heuristic_pipelines_small_contiguous_key_blocks_deeper():
    """num_stages 4 where one program walks a whole contiguous cache of head dim 64 or 128, 3 where a cache of head
    dim 64 is split and for contiguous GTA, 2 for wider key blocks and for paged caches but GTA's, 5 (two buffers)
    for paged GTA in 2-byte elements (H200 measurements: pipeline_stages)."""
    small, wide = AttentionSpec.grouped(32, 8, 64), AttentionSpec.grouped(32, 8, 128)
    whole = heuristic_config(small, 64, 4096, 1, H100.multiprocessors)
    split = heuristic_config(small, 1, 65536, 1, H100.multiprocessors)
    assert (whole.num_splits, whole.num_stages) == (1, 4)
    assert split.num_splits > 1 and split.num_stages == 3
    assert heuristic_config(small.with_storage(paged=True), 64, 4096, 1, H100.multiprocessors).num_stages == 2
    # Head dim 128 (32 KiB blocks of 64 keys): 4 stages where a program walks a whole cache, 2 where it is split.
    wide_whole = heuristic_config(wide, 128, 8192, 1, H100.multiprocessors)
    wide_split = heuristic_config(wide, 8, 32768, 1, H100.multiprocessors)
    assert (wide_whole.num_splits, wide_whole.block_n, wide_whole.num_stages) == (1, 64, 4)
    assert wide_split.num_splits > 1 and wide_split.num_stages == 2
    assert pipeline_stages(wide, block_n=128, num_splits=1) == 2  # 64 KiB blocks
    assert heuristic_config(small.with_storage(dtype="float32"), 64, 4096, 1, H100.multiprocessors).num_stages == 2
    # Contiguous GTA up to 255 wide: 3 stages in 2-byte elements, split or not, small heads included; fp32 GTA,
    # wider tied states and contiguous latents (tied too) keep 2.
    gta = AttentionSpec.grouped_tied(16, 4, 128, 64)
    assert pipeline_stages(AttentionSpec.grouped_tied(16, 4, 64, 32), block_n=64, num_splits=1) == 3
    assert heuristic_config(gta, 64, 8192, 1, H100.multiprocessors).num_stages == 3
    long_gta = heuristic_config(gta, 1, 65536, 1, H100.multiprocessors)
    assert long_gta.num_splits > 1 and long_gta.num_stages == 3
    whole_gta = heuristic_config(gta, 128, 8192, 1, H100.multiprocessors)
    assert (whole_gta.num_splits, whole_gta.num_stages) == (1, 3)
    assert pipeline_stages(gta.with_storage(dtype="float16"), block_n=64, num_splits=1) == 3
    assert pipeline_stages(gta.with_storage(dtype="float32"), block_n=64, num_splits=1) == 2
    assert pipeline_stages(AttentionSpec.grouped_tied(16, 4, 256, 64), block_n=32, num_splits=1) == 2
    assert pipeline_stages(AttentionSpec.latent(16, 1, 128, 64), block_n=64, num_splits=1) == 2
    # Paged: GTA takes two buffers of a key block; GQA, latents and fp32 GTA keep one.
    assert heuristic_config(gta.with_storage(paged=True), 32, 4096, 4, H100.multiprocessors).num_stages == 5
    assert pipeline_stages(gta.with_storage(paged=True, dtype="float32"), block_n=64, num_splits=1) == 2
    assert heuristic_config(wide.with_storage(paged=True), 32, 4096, 1, H100.multiprocessors).num_stages == 2
    for latent in (AttentionSpec.latent(16, 1, 512, 64, paged=True), AttentionSpec.latent(16, 2, 256, 64, paged=True),
                   AttentionSpec.latent(16, 1, 128, 64, paged=True)):
        assert heuristic_config(latent, 32, 4096, 1, H100.multiprocessors).num_stages == 2
    assert pipeline_stages(AttentionSpec.grouped(16, 16, 64), block_n=64, num_splits=1) == 4  # MHA, measured
    contiguous = ProblemShape(batch=64, query_len=1, capacity=4096, page_size=0)
    paged = ProblemShape(batch=64, query_len=1, capacity=4096, page_size=64)
    wide_default = heuristic_config(wide, 8, 32768, 1, H100.multiprocessors)  # 2 stages: the space adds 3 and 4
    assert build_search_space(wide, contiguous, H100.multiprocessors, [wide_default]).values("num_stages") == (2, 3, 4)
    assert build_search_space(small.with_storage(paged=True), paged, H100.multiprocessors,
                              [heuristic_config(small.with_storage(paged=True), 64, 4096, 1,
                                                H100.multiprocessors)]).values("num_stages") == (2, 5)


def test_heuristic_reads_latents_of_256_in_64_key_blocks_at_few_rows():
    """The one-warpgroup latent tiles (latents of 256) take 64-key blocks up to 32 packed rows in 2-byte elements,
    contiguous or in pages of whole blocks (H200: 14-23% faster than 32; latent_block_n); 32 at 64 rows, in fp32, in
    pages of 16 keys, for MLA's 512-wide latents and for the unmeasured layouts of that tile (GQA of head dim 256,
    latents of 384)."""
    gla2_xl = AttentionSpec.latent(16, 2, 256, 64)  # 8 rows a latent head at Lq 1
    for query_len, block_m in ((1, 16), (2, 16), (4, 32)):
        config = heuristic_config(gla2_xl, 64, 8192, query_len, H100.multiprocessors)
        assert (config.block_m, config.block_n, config.num_stages) == (block_m, 64, 2)
    paged = gla2_xl.with_storage(paged=True, dtype="float16")
    assert [heuristic_config(paged, 8, 32768, 1, 132, page_size=page).block_n for page in (64, 128, 16, 32)] == \
        [64, 64, 32, 32]
    assert heuristic_config(AttentionSpec.grouped(16, 2, 256), 64, 8192, 1, H100.multiprocessors).block_n == 32
    assert heuristic_config(AttentionSpec.latent(16, 2, 384, 64), 64, 8192, 1, H100.multiprocessors).block_n == 32
    assert heuristic_config(gla2_xl, 64, 8192, 8, H100.multiprocessors).block_n == 32  # 64 rows
    assert heuristic_config(gla2_xl.with_storage(dtype="float32"), 64, 8192, 1, H100.multiprocessors).block_n == 32
    assert heuristic_config(PAPER_SPECS["gla8"], 32, 4096, 1, H100.multiprocessors, 64).block_n == 64  # 16 rows
    assert heuristic_config(PAPER_SPECS["gla2"], 32, 4096, 1, H100.multiprocessors).block_n == 32  # 64 rows
    assert heuristic_config(PAPER_SPECS["mla"], 32, 4096, 1, H100.multiprocessors).block_n == 32

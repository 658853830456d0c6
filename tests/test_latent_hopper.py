"""The Hopper latent kernel without a GPU: its generated source compiles for sm_90 (Triton's own compiler and
ptxas, no device needed), which calls take it, its split heuristic, and its errors. The GPU runs it against
the float64 reference in test_latent_hopper_gpu.py."""
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

import glacompiler
from benchmark_scripts import load_benchmark_script
from glacompiler.kernels import KernelCall
from glacompiler.kernels.family import open_choices
from glacompiler.kernels.latent_hopper import LATENT_HOPPER
from glacompiler.kernels.latent_hopper.config import (
    SM90_CTA_RESERVE, SM90_SHARED_MEMORY, SM90_SHARED_MEMORY_PER_SM, LatentHopperConfig, LatentHopperTile,
    heuristic_config, latent_copy_rows,
)
from glacompiler.kernels.latent_hopper.render import render_latent_hopper_kernel
from glacompiler.kernels.latent_hopper.support import layout_problem, spec_problem
from glacompiler.spec import AttentionSpec, ProblemShape


def latent_spec(heads=128, latent_heads=1, width=512, rope=64, paged=True, dtype="bfloat16") -> AttentionSpec:
    return AttentionSpec.latent(heads, latent_heads, width, rope, dtype=dtype, paged=paged)


def latent_layout_problem(q, q_rope, k_cache, k_rope, spec: AttentionSpec, shape: ProblemShape):
    """What keeps a call off the kernel on an sm_90 GPU: the family's checks less the device's."""
    return spec_problem(spec, shape) or layout_problem(q, q_rope, k_cache, k_rope, spec, shape)


def latent_call(q, q_rope, k_cache, k_rope) -> KernelCall:
    return KernelCall(q, k_cache, None, q_rope, k_rope, None, None, None, 1.0, True)


def operands(spec: AttentionSpec, page_size: int, query_len: int = 1, dtype=torch.bfloat16):
    """q, q_rope, k_cache and k_rope_cache as the op takes them (4 pages of page_size, or 2 sequences of 4)."""
    lead = (4, page_size) if page_size else (2, 4)
    q = torch.randn(2, query_len, spec.num_q_heads, spec.head_dim_q, dtype=dtype)
    q_rope = torch.randn(2, query_len, spec.num_q_heads, spec.rope_dim, dtype=dtype)
    k_cache = torch.randn(*lead, spec.num_kv_heads, spec.head_dim_k, dtype=dtype)
    k_rope = torch.randn(*lead, spec.rope_dim, dtype=dtype)
    return q, q_rope, k_cache, k_rope


COMPILE_FOR_SM90 = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.experimental.gluon._runtime import GluonASTSource
from glacompiler.kernels.common.tiles import rope_tile_width
from glacompiler.kernels.latent_hopper.config import LatentHopperTile, latent_copy_rows
from glacompiler.kernels.latent_hopper.launch import tma_tile_layout
from glacompiler.kernels.latent_hopper.render import latent_hopper_module
from glacompiler.spec import AttentionSpec

spec = AttentionSpec.from_dict(json.loads(sys.argv[1]))
query_len, page_size, row_split, mask = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5]
extensions, block_n, one_warpgroup = sys.argv[6].split("+"), int(sys.argv[7]), sys.argv[8] == "1"
warp_specialized, alternating, lazy_rescale = sys.argv[9] == "1", sys.argv[10] == "1", sys.argv[11] == "1"
copy_rows = latent_copy_rows(page_size, block_n)
tile = LatentHopperTile(row_split, copy_rows, block_n=block_n, one_warpgroup=one_warpgroup,
                        warp_specialized=warp_specialized, alternating=alternating, lazy_rescale=lazy_rescale)
kernel = latent_hopper_module(spec, tile).latent_decode_hopper_kernel
element = {"bfloat16": "bf16", "float16": "fp16"}[spec.dtype]
constexprs = dict(G=spec.group_size, LQ=query_len, PAGE_SIZE=page_size, CAUSAL=query_len > 1,
                  HAS_MASK=mask != "none", MASK_IS_BOOL=mask.startswith("bool"), MASK_PER_ROW=mask.endswith("-rows"),
                  HAS_SINKS="sinks" in extensions, HAS_WINDOW="window" in extensions)
tiles = dict(k_desc=tile.latent_copy_width(spec.head_dim_k), kr_desc=rope_tile_width(spec.rope_dim))
signature, attrs = {}, {}
for index, name in enumerate(kernel.arg_names):
    if name in constexprs:
        signature[name] = "constexpr"
    elif name in tiles:
        layout = tma_tile_layout(tiles[name], 2)
        signature[name] = f"tensordesc<{element}[{copy_rows}, {tiles[name]}],{layout!r}>"
    elif name in ("Q", "QR", "OUT"):
        signature[name] = "*" + element
        attrs[(index,)] = [["tt.divisibility", 16]]
    elif name in ("SEQLENS", "PAGE_TABLE", "KV_BEGIN", "KV_END"):
        signature[name] = "*i32"
    elif name == "MASK":
        signature[name] = {"none": "*i32", "bool": "*u8", "additive": "*" + element}[mask.removesuffix("-rows")]
    elif name in ("LSE", "SINKS"):
        signature[name] = "*fp32"
    else:
        signature[name] = "fp32" if name == "qk_scale_log2" else "i32"
        if name.startswith(("stride_q", "stride_o")):  # what a contiguous q and out give (the op requires it)
            attrs[(index,)] = [["tt.divisibility", 16]]
source = GluonASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": tile.num_warps})
print(json.dumps(dict(ptx=compiled.asm["ptx"], shared=compiled.metadata.shared)))
"""


def compile_for_sm90(spec: AttentionSpec, query_len: int, page_size: int, row_split: bool, mask: str,
                     extensions: str = "", block_n: int = 64, one_warpgroup: bool = False,
                     warp_specialized: bool = False, alternating: bool = False, lazy_rescale: bool = False) -> dict:
    """The generated kernel compiled ahead of time for sm_90, specialised as the JIT would, in a fresh
    process: this one imported Triton in interpreter mode (conftest), where Gluon does not load."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90, json.dumps(spec.to_dict()), str(query_len),
                             str(page_size), str(int(row_split)), mask, extensions, str(block_n), str(int(one_warpgroup)),
                             str(int(warp_specialized)), str(int(alternating)), str(int(lazy_rescale))],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_warp_specialized_build(compiled: dict, threads: int) -> None:
    """A warp-specialised kernel's sm_90 build: its threads, registers moved between partitions (setmaxnreg), both
    products and the TMA copies, in a CTA's shared memory."""
    ptx = compiled["ptx"]
    assert f".reqntid {threads}" in ptx and "setmaxnreg.dec" in ptx and "setmaxnreg.inc" in ptx
    assert "wgmma.mma_async" in ptx and "cp.async.bulk.tensor" in ptx
    assert 0 < compiled["shared"] <= SM90_SHARED_MEMORY


@pytest.mark.parametrize("spec, query_len, page_size, row_split, mask, extensions, block_n", [
    (latent_spec(), 1, 64, False, "none", "", 64),  # MLA, the paper's layout
    (latent_spec(heads=64, latent_heads=1, width=256, rope=48, paged=False, dtype="float16"), 1, 0, False, "bool", "",
     64),
    (latent_spec(heads=128, latent_heads=2, width=256, rope=64, paged=True), 3, 128, True, "additive", "", 64),  # causal
    (latent_spec(), 2, 16, False, "bool-rows", "", 64),  # four page copies per key block; a mask per draft token
    # FlashAttention's extensions the kernel takes: sinks and a window, on both tiles, with and without a mask
    (latent_spec(), 1, 64, False, "none", "sinks+window", 64),
    (latent_spec(heads=128, latent_heads=2, width=256, rope=64, paged=True), 2, 64, True, "bool", "sinks+window", 64),
    # 128-key blocks of a 256-wide latent (GLA-2 on two GPUs: one latent head of 64 query heads a device): two
    # page copies a block, or one 128-row copy of a contiguous cache
    (latent_spec(heads=64, latent_heads=1, width=256, rope=64, paged=True), 1, 64, False, "bool", "", 128),
    (latent_spec(heads=128, latent_heads=8, width=256, rope=64, paged=False), 4, 0, False, "none", "sinks+window", 128),
])
def test_generated_kernel_compiles_for_sm90(spec, query_len, page_size, row_split, mask, extensions, block_n):
    compiled = compile_for_sm90(spec, query_len, page_size, row_split, mask, extensions, block_n)
    assert "wgmma.mma_async" in compiled["ptx"]  # warpgroup products
    assert "cp.async.bulk.tensor" in compiled["ptx"]  # TMA key-block copies
    assert 0 < compiled["shared"] <= SM90_SHARED_MEMORY


@pytest.mark.parametrize("spec, query_len, page_size, mask, extensions", [
    (latent_spec(heads=128, latent_heads=2, width=256, rope=64, paged=True), 2, 64, "none", ""),  # GLA-2, Lq 2
    (latent_spec(heads=128, latent_heads=2, width=256, rope=64, paged=True), 3, 16, "bool-rows", "sinks+window"),
    (latent_spec(heads=48, latent_heads=1, width=256, rope=16, paged=False, dtype="float16"), 1, 0, "additive", ""),
])
def test_one_warpgroup_kernel_compiles_into_half_an_sm(spec, query_len, page_size, mask, extensions):
    """The one-warpgroup tile as the JIT builds it for sm_90 (4 warps): what the compiler allocates lets a second
    program onto the SM (half its shared memory, less the driver's reserve for each)."""
    compiled = compile_for_sm90(spec, query_len, page_size, True, mask, extensions, 64, one_warpgroup=True)
    assert "wgmma.mma_async" in compiled["ptx"] and "cp.async.bulk.tensor" in compiled["ptx"]
    assert 0 < compiled["shared"] + SM90_CTA_RESERVE <= SM90_SHARED_MEMORY_PER_SM // 2


GLA2 = latent_spec(heads=128, latent_heads=2, width=256, rope=64, paged=True)
LAZY = False  # the heuristic's lazy_rescale on the row-owned tiles


@pytest.mark.parametrize("query_len, page_size, mask, extensions, one_warpgroup", [
    (4, 0, "additive", "", False),
    (3, 16, "bool-rows", "sinks+window", False),
    (2, 64, "none", "", True),
    (1, 32, "bool", "sinks", True),
])
def test_lazy_rescale_compiles_for_sm90(query_len, page_size, mask, extensions, one_warpgroup):
    """The lazily rescaled row-owned tiles: one warpgroup still fits half an SM."""
    compiled = compile_for_sm90(GLA2, query_len, page_size, True, mask, extensions, 64, one_warpgroup=one_warpgroup,
                                lazy_rescale=True)
    assert "wgmma.mma_async" in compiled["ptx"] and "cp.async.bulk.tensor" in compiled["ptx"]
    limit = SM90_SHARED_MEMORY_PER_SM // 2 - SM90_CTA_RESERVE if one_warpgroup else SM90_SHARED_MEMORY
    assert 0 < compiled["shared"] <= limit


def test_lazy_rescale_is_a_variant_of_its_own():
    """The lazy rescale renders another kernel, versioned apart: a table's entries that do not run it stay current
    when it changes (that the family's version did not move with it, test_tables checks on the shipped tables)."""
    from glacompiler.kernels.latent_hopper.render import latent_hopper_kernels_version

    plain = render_latent_hopper_kernel(GLA2, LatentHopperTile(True, one_warpgroup=True))
    lazy = render_latent_hopper_kernel(GLA2, LatentHopperTile(True, one_warpgroup=True, lazy_rescale=True))
    assert "RESCALE_SLACK" in lazy and "RESCALE_SLACK" not in plain
    variants = LATENT_HOPPER.variant_versions()
    assert set(variants) == {"latent_hopper+lazy_rescale", "latent_hopper+ping_pong"}
    assert latent_hopper_kernels_version() not in variants.values()
    assert LATENT_HOPPER.config_variants(LatentHopperConfig(4, True, 64, one_warpgroup=True), GLA2) == ()
    assert LATENT_HOPPER.config_variants(LatentHopperConfig(4, True, 64, one_warpgroup=True, lazy_rescale=True),
                                         GLA2) == ("latent_hopper+lazy_rescale",)


def test_lazy_rescale_config():
    """A choice of the row-owned tiles; tables tuned before it leave it out (open), and a shared tile has none."""
    assert LatentHopperConfig(2, True, 64, lazy_rescale=True).problem_with(GLA2) is None
    assert "row_split" in LatentHopperConfig(2, False, lazy_rescale=True).problem_with(GLA2)
    with pytest.raises(ValueError, match="row_split"):
        LatentHopperTile(row_split=False, lazy_rescale=True)
    assert LatentHopperConfig(2, True, 64, lazy_rescale=True).to_dict()["lazy_rescale"] is True
    assert LatentHopperConfig(2, True, 64, lazy_rescale=False).to_dict()["lazy_rescale"] is False
    assert "lazy_rescale" not in LatentHopperConfig(2, False).to_dict()  # no such choice on the shared tile
    old_entry = LatentHopperConfig.from_dict({"num_splits": 2, "row_split": True, "block_n": 64})
    assert open_choices(old_entry) == ("lazy_rescale",)
    assert LATENT_HOPPER.resolved_config(old_entry, GLA2).lazy_rescale is False
    assert not old_entry.tile_for(GLA2, 64).lazy_rescale


def test_template_specialises_per_latent_width_and_tile():
    mla = render_latent_hopper_kernel(latent_spec(), LatentHopperTile(row_split=False))
    gla = render_latent_hopper_kernel(latent_spec(width=256, rope=32), LatentHopperTile(row_split=True))
    assert "HEAD_DIM = gl.constexpr(512)" in mla and "HEAD_DIM = gl.constexpr(256)" in gla
    assert "ROPE_WIDTH = gl.constexpr(32)" in gla
    assert "BLOCK_M = gl.constexpr(64)" in mla and "p_smem" in mla
    assert "BLOCK_M = gl.constexpr(128)" in gla and "p_smem" not in gla  # P stays in registers
    assert "COPY_ROWS)" not in mla  # one copy per key block: no quarters of a stage


def test_stages_fill_shared_memory_and_mla_queues_scores_ahead():
    mla, gla = latent_spec(), latent_spec(latent_heads=2, width=256)
    assert LatentHopperTile(row_split=False).num_stages(512, 64) == 2  # MLA: the query tile takes a third
    assert LatentHopperTile(row_split=False).num_stages(256, 64) == 4
    assert LatentHopperTile(row_split=True).num_stages(256, 64) == 3
    mla_source = render_latent_hopper_kernel(mla, LatentHopperTile(row_split=False))
    gla_source = render_latent_hopper_kernel(gla, LatentHopperTile(row_split=False))
    assert "NUM_STAGES = gl.constexpr(2)" in mla_source and "NUM_STAGES = gl.constexpr(4)" in gla_source
    assert "next_s = issue_scores(" in mla_source and "next_s" not in gla_source
    forced = render_latent_hopper_kernel(gla, LatentHopperTile(row_split=False, scores_ahead=True))
    assert "next_s = issue_scores(" in forced


def test_small_pages_take_one_copy_each():
    assert latent_copy_rows(0) == latent_copy_rows(64) == latent_copy_rows(256) == 64
    assert latent_copy_rows(16) == 16
    source = render_latent_hopper_kernel(latent_spec(), LatentHopperTile(row_split=False, copy_rows=16))
    assert "COPY_ROWS = gl.constexpr(16)" in source
    # Each block's four pages: four copies of each cache into quarters of the stage, at the prologue and refill.
    for offset in (0, 16, 32, 48):
        assert f"k_tile.slice({offset}, COPY_ROWS)" in source and f"kr_smem.index(b).slice({offset}, COPY_ROWS)" in source


def shape(batch=2, query_len=1, capacity=256, page_size=64) -> ProblemShape:
    return ProblemShape(batch, query_len, capacity, page_size)


def test_paper_layouts_take_the_kernel():
    mla = latent_spec()
    assert latent_layout_problem(*operands(mla, 64), mla, shape()) is None
    assert latent_layout_problem(*operands(mla, 0, query_len=16), mla, shape(page_size=0, query_len=16)) is None
    gla2 = latent_spec(latent_heads=2, width=256)
    assert latent_layout_problem(*operands(gla2, 128), gla2, shape(page_size=128)) is None
    few_rows = latent_spec(heads=16, latent_heads=2, width=256)  # 8 rows per latent head: a mostly empty tile
    assert latent_layout_problem(*operands(few_rows, 64), few_rows, shape()) is None
    for small_page in (16, 32):  # a block takes one copy per page
        assert latent_layout_problem(*operands(mla, small_page), mla, shape(page_size=small_page)) is None


@pytest.mark.parametrize("change, reason", [
    (dict(page_size=8), "page size 8 is below 16"),
    (dict(spec=latent_spec(width=128)), "latent layout"),
    (dict(spec=latent_spec(rope=0)), "no rope key"),
    (dict(spec=latent_spec(dtype="float32")), "dtype float32"),
    (dict(strided_rows=True), "rows are not evenly spaced"),
    (dict(unaligned=True), "16-byte aligned"),
    (dict(odd_query_rows=True), "q rows are not 16-element aligned"),
])
def test_layouts_the_kernel_leaves_to_the_portable_one(change, reason):
    spec = change.get("spec", latent_spec())
    page_size = change.get("page_size", 64)
    q, q_rope, k_cache, k_rope = operands(spec, page_size, change.get("query_len", 1))
    if change.get("odd_query_rows"):  # heads 8 elements apart: a slice of a wider tensor
        q = torch.randn(2, 1, spec.num_q_heads, spec.head_dim_q + 8, dtype=torch.bfloat16)[..., :spec.head_dim_q]
    if change.get("strided_rows"):
        padded_pages = torch.randn(4, page_size + 1, spec.num_kv_heads, spec.head_dim_k, dtype=torch.bfloat16)
        k_cache = padded_pages[:, :page_size]
    if change.get("unaligned"):
        flat = torch.randn(k_cache.numel() + 1, dtype=torch.bfloat16)
        k_cache = flat[1:].view(k_cache.shape)
    problem = latent_layout_problem(q, q_rope, k_cache, k_rope, spec,
                                    shape(query_len=change.get("query_len", 1), page_size=page_size))
    assert problem is not None and reason in problem


@pytest.mark.parametrize("query_len, page_size, mask, extensions, block_n, lazy_rescale", [
    (2, 64, "none", "", 64, False),  # GLA-2 at Lq 2: the grid's case
    (4, 0, "additive", "", 128, False),
    (3, 16, "bool-rows", "sinks+window", 64, True),  # four page copies a block, a mask per draft token
    (1, 32, "bool", "sinks", 128, True),
])
def test_ping_pong_kernel_compiles_for_sm90(query_len, page_size, mask, extensions, block_n, lazy_rescale):
    """The ping-pong tile as the JIT builds it for sm_90: two row groups of 4 warps and a refill warp (a warpgroup's
    slot: 384 threads), registers moved between them (setmaxnreg), both products and the TMA copies, in a CTA's
    shared memory."""
    compiled = compile_for_sm90(GLA2, query_len, page_size, True, mask, extensions, block_n, warp_specialized=True,
                                lazy_rescale=lazy_rescale)
    assert_warp_specialized_build(compiled, threads=384)


def test_ping_pong_tile_shape():
    """128 rows in two row groups, 4 warps outside the warp-specialised region, the query's latent part alone beside
    the stages (4 of 64-key blocks, 2 of 128-key ones for GLA-2), its own template and variant; it takes neither one
    warpgroup nor the alternating schedule, and tables that leave warp_specialized out of a row_split entry keep
    the 128-row tile in step."""
    config = LatentHopperConfig(2, True, 64, warp_specialized=True)
    tile = config.tile_for(GLA2, 64)
    assert tile.ping_pong and (tile.block_m, tile.num_warps, tile.num_stages(256, 64)) == (128, 4, 4)
    assert LatentHopperConfig(2, True, 128, warp_specialized=True).tile_for(GLA2, 64).num_stages(256, 64) == 2
    source = render_latent_hopper_kernel(GLA2, tile)
    assert "def row_group_partition(" in source and "def refill_partition(" in source
    assert LATENT_HOPPER.config_variants(config, GLA2) == ("latent_hopper+ping_pong",)
    assert LATENT_HOPPER.config_variants(dataclasses.replace(config, lazy_rescale=True), GLA2) == (
        "latent_hopper+ping_pong",)
    assert LatentHopperConfig.from_dict(config.to_dict()) == config and config.to_dict()["warp_specialized"]
    assert "warp_specialized" not in LatentHopperConfig(2, True, 64).to_dict()
    assert not LatentHopperConfig.from_dict({"num_splits": 2, "row_split": True}).tile_for(GLA2, 64).ping_pong
    assert "one_warpgroup" in LatentHopperConfig(2, True, 64, one_warpgroup=True, warp_specialized=True).problem_with(GLA2)
    assert "alternating" in LatentHopperConfig(2, True, 64, warp_specialized=True, alternating=True).problem_with(GLA2)
    assert config.problem_with(AttentionSpec.latent(128, 1, 512, 64)) is not None  # a 512-wide latent: no row_split


def test_cpu_calls_stay_off_the_hopper_kernel():
    spec = latent_spec()
    q, q_rope, k_cache, k_rope = operands(spec, 64)
    assert LATENT_HOPPER.supports(spec, shape(), latent_call(q, q_rope, k_cache, k_rope)) == "not on a CUDA device"


@pytest.mark.parametrize("spec, query_len, page_size, mask, extensions, block_n", [
    (latent_spec(), 1, 64, "none", "", 64),  # MLA, the paper's layout
    (latent_spec(), 3, 16, "bool-rows", "sinks+window", 64),  # page copies, a mask per draft token, extensions
    (latent_spec(heads=128, latent_heads=8, width=256, rope=64, paged=False), 2, 0, "additive", "", 128),  # GLA-8
])
def test_warp_specialized_kernel_compiles_for_sm90(spec, query_len, page_size, mask, extensions, block_n):
    """The warp-specialised tile as the JIT builds it for sm_90: the score warpgroup's 4 warps plus the value
    warpgroup's 4 (256 threads), registers moved to the score warpgroup (setmaxnreg), both products and the TMA
    copies, and its shared memory within a CTA's."""
    compiled = compile_for_sm90(spec, query_len, page_size, False, mask, extensions, block_n, warp_specialized=True)
    assert_warp_specialized_build(compiled, threads=256)


@pytest.mark.parametrize("spec, query_len, page_size, mask, extensions", [
    (latent_spec(), 1, 64, "none", ""),  # MLA, the paper's layout
    (latent_spec(), 3, 16, "bool-rows", "sinks+window"),  # page copies, a mask per draft token, extensions
    (latent_spec(heads=128, latent_heads=2, width=256, rope=64, paged=False), 2, 0, "additive", ""),  # GLA-2
])
def test_alternating_kernel_compiles_for_sm90(spec, query_len, page_size, mask, extensions):
    """The alternating schedule as the JIT builds it for sm_90: two warpgroups of different code (256 threads,
    setmaxnreg), both products and the TMA copies of half a latent's width, in a CTA's shared memory."""
    compiled = compile_for_sm90(spec, query_len, page_size, False, mask, extensions, 64, warp_specialized=True,
                                alternating=True)
    assert_warp_specialized_build(compiled, threads=256)


def test_alternating_tile_shape():
    """4 warps outside the warp-specialised region, 64 rows, 64-key blocks in two stages (one a warpgroup's blocks)
    held in halves, the query's rope part in registers; its own template."""
    mla = latent_spec()
    tile = LatentHopperConfig(1, alternating=True).tile_for(mla, 64)
    assert tile.warp_specialized and tile.alternating
    assert (tile.block_m, tile.block_n, tile.num_warps, tile.num_stages(512, 64)) == (64, 64, 4, 2)
    # 64 x 512 query + two 8 KB P tiles + two 72 KB stages in 227 KB (the rope query is not in shared memory).
    assert tile.stages_that_fit(512, 64) == 2
    source = render_latent_hopper_kernel(mla, tile)
    assert "def even_partition(" in source and "def odd_partition(" in source and "HALF_DIM = gl.constexpr(256)" in source
    assert "def even_partition(" not in render_latent_hopper_kernel(mla, LatentHopperTile(False, warp_specialized=True))


def test_warp_specialized_tile_shape():
    """4 warps outside the warp-specialised region (the value warpgroup's 4 come with it), the shared tile's 64 rows
    and stages, the other template."""
    mla = latent_spec()
    tile = LatentHopperConfig(1).tile_for(mla, 64)
    assert tile.warp_specialized and (tile.block_m, tile.block_n, tile.num_warps) == (64, 64, 4)
    assert tile.num_stages(512, 64) == 2  # 64 x 576 query + 8 KB of P + two 72 KB stages in 227 KB
    source = render_latent_hopper_kernel(mla, tile)
    assert "gl.warp_specialize(" in source and "HALF_DIM = gl.constexpr(256)" in source
    assert "gl.warp_specialize(" not in render_latent_hopper_kernel(mla, LatentHopperTile(False))


def test_config_heuristic():
    mla = latent_spec()
    # Batch 128: 256 one-per-SM programs already fill two waves of 132 SMs.
    # The shared 64-row tile is warp-specialised; MLA's warpgroups take turns, narrower latents keep the score /
    # value split.
    turns, ws = dict(warp_specialized=True, alternating=True), dict(warp_specialized=True, alternating=False)
    assert heuristic_config(mla, shape(batch=128, capacity=8192), 132) == LatentHopperConfig(1, False, block_n=64, **turns)
    # One sequence: 2 programs a split; 32 splits of 4 blocks (64 of 2 would fill more SMs, but MLA's 512-wide
    # partial outputs cost the combine more than the shorter splits save: 20.3 against 18.8 us on an H200).
    assert heuristic_config(mla, shape(batch=1, capacity=8192), 132).num_splits == 32
    # Eight: 16 programs a split, so 8 splits fill the SMs once (the 75% rule stopped at 7: 148.7 against 139.4 us
    # at S32K on an H200, 164.4 against 152.6 on an H100).
    assert heuristic_config(mla, shape(batch=8, capacity=32768), 132).num_splits == 8
    # MLA at Lq 2 keeps 64-row tiles shared by two warpgroups (64 x 512 fp32 is too much for one).
    assert heuristic_config(mla, shape(batch=128, query_len=2), 132) == LatentHopperConfig(1, False, block_n=64, **turns)
    # A 256-wide latent head of 64 rows: 64-row programs of one warpgroup, two an SM (64-key blocks); of 128 or 256,
    # the ping-pong 128-row tile on 128-key blocks; of 192 (a last program's second group empty: not timed) one
    # warpgroup again.
    gla2 = latent_spec(latent_heads=2, width=256)
    for query_len in (1, 3):
        assert heuristic_config(gla2, shape(batch=128, query_len=query_len), 132) == \
            LatentHopperConfig(1, True, block_n=64, one_warpgroup=True, lazy_rescale=LAZY)
    for query_len in (2, 4):
        assert heuristic_config(gla2, shape(batch=128, query_len=query_len), 132) == \
            LatentHopperConfig(1, True, block_n=128, warp_specialized=True, lazy_rescale=LAZY)
    # 96 rows (48 heads at Lq 2): a second group of 32 rows.
    assert heuristic_config(latent_spec(heads=96, latent_heads=2, width=256), shape(query_len=2), 132).warp_specialized
    # ... and their splits fill the SMs once, one program each: one sequence, 2 latent heads, 1 row block at Lq 2
    # takes 64 splits (not timed on this tile at Lq 2; at Lq 4, 2 row blocks, 32 splits ran 69.8 us on an H200
    # against the 75% rule's 25 at 77.9, benchmarks/logs/split_counts_h200_6e414cd.txt); 32 sequences at Lq 2 are
    # 64 programs a split, two splits fill 97% of 132 SMs.
    assert heuristic_config(gla2, shape(batch=1, query_len=2, capacity=65536), 132).num_splits == 64
    assert heuristic_config(gla2, shape(batch=32, query_len=2, capacity=4096), 132).num_splits == 2
    # Fewer rows (GLA-8: 16 a latent head at Lq 1) too: the programs are memory-bound, and two an SM keep more
    # loads in flight than the shared tile's 128-key blocks.
    gla8 = latent_spec(latent_heads=8, width=256)
    for query_len in (1, 2, 4):
        assert heuristic_config(gla8, shape(batch=128, query_len=query_len), 132) == \
            LatentHopperConfig(1, True, block_n=64, one_warpgroup=True, lazy_rescale=LAZY)
    # ... counting one 64-row program a latent head at Lq 1 to 4: one sequence is 8 programs a split, and 32 splits
    # run two an SM at once, 32 blocks each (the 75% rule's 25 stopped at 75% of those slots).
    for query_len in (1, 4):
        assert heuristic_config(gla8, shape(batch=1, query_len=query_len, capacity=65536), 132).num_splits == 32
    assert heuristic_config(mla, shape(query_len=1), 132).block_n == 64
    # A rope key wider than 64 leaves one stage on one warpgroup: 64 rows take the shared tile, more the ping-pong
    # tile on 64-key blocks; fewer rows the shared tile with 64-key blocks (two stages of 128 fit beside a 128-wide
    # rope key on neither).
    assert heuristic_config(latent_spec(latent_heads=8, width=256, rope=128), shape(batch=128, query_len=1), 132) == \
        LatentHopperConfig(1, False, block_n=64, **ws)
    wide_rope = latent_spec(latent_heads=2, width=256, rope=128)
    assert heuristic_config(wide_rope, shape(batch=128, query_len=1), 132) == LatentHopperConfig(1, False, block_n=64, **ws)
    assert heuristic_config(wide_rope, shape(batch=128, query_len=2), 132) == LatentHopperConfig(
        1, True, block_n=64, warp_specialized=True, lazy_rescale=LAZY)


@pytest.mark.parametrize("width", [256, 512])
@pytest.mark.parametrize("rope", [16, 48, 64, 96, 128, 256])
@pytest.mark.parametrize("latent_heads", [1, 2, 8])
def test_heuristic_configs_fit_their_spec(width, rope, latent_heads):
    """Whatever the rope width and rows, the heuristic's config is one the family runs (no problem_with), for every
    spec the kernel takes."""
    spec = latent_spec(latent_heads=latent_heads, width=width, rope=rope)
    if spec_problem(spec, shape()) is not None:
        return  # the portable kernels run it
    for query_len in (1, 2, 4):
        config = heuristic_config(spec, shape(query_len=query_len), 132)
        assert config.problem_with(spec) is None, (config, config.problem_with(spec))


def test_config_checks():
    with pytest.raises(ValueError, match="num_splits"):
        LatentHopperConfig(num_splits=0)
    # A 128 x 512 fp32 accumulator per 128 rows does not fit: MLA-wide latents keep 64-row tiles.
    assert "up to 256 wide" in LatentHopperConfig(row_split=True).problem_with(latent_spec())
    assert LatentHopperConfig(row_split=True).problem_with(latent_spec(latent_heads=2, width=256)) is None
    with pytest.raises(ValueError, match="block_n"):
        LatentHopperConfig(block_n=32)
    # Two 128-key stages fit beside a 64-row tile of a 256-wide latent only.
    gla2 = latent_spec(latent_heads=2, width=256)
    assert LatentHopperConfig(block_n=128).problem_with(gla2) is None
    assert "do not fit two stages" in LatentHopperConfig(block_n=128).problem_with(latent_spec())
    # One warpgroup: the row_split code on 64 rows, 64-key blocks, latents up to 256 wide.
    one = LatentHopperConfig(row_split=True, one_warpgroup=True)
    assert one.problem_with(gla2) is None
    assert "row_split" in LatentHopperConfig(one_warpgroup=True).problem_with(gla2)
    assert "up to 256 wide" in one.problem_with(latent_spec())
    wide_blocks = LatentHopperConfig(row_split=True, block_n=128, one_warpgroup=True)
    assert "do not fit two stages" in wide_blocks.problem_with(gla2)
    assert "do not fit two stages" in LatentHopperConfig(row_split=True, block_n=128).problem_with(gla2)
    # No block size given (a table tuned before it was a choice): the preferred one for the spec and tile.
    assert LatentHopperConfig().tile_for(gla2, 64).block_n == 128
    assert LatentHopperConfig(row_split=True).tile_for(gla2, 64).block_n == 64
    assert LatentHopperConfig().tile_for(latent_spec(), 64).block_n == 64
    assert LatentHopperConfig(block_n=64).tile_for(gla2, 16).copy_rows == 16
    with pytest.raises(ValueError, match="row_split"):
        LatentHopperTile(row_split=False, one_warpgroup=True)
    # Warp-specialised: a form of the shared 64-row tile, with either block size where two stages fit, and of the
    # 128-row tile (ping-pong), not of one warpgroup.
    assert LatentHopperConfig(block_n=128, warp_specialized=True).problem_with(gla2) is None
    assert LatentHopperConfig(block_n=64, warp_specialized=True).problem_with(latent_spec()) is None
    assert LatentHopperConfig(row_split=True, warp_specialized=True).problem_with(gla2) is None
    assert "do not fit two stages" in LatentHopperConfig(block_n=128, warp_specialized=True).problem_with(latent_spec())
    with pytest.raises(ValueError, match="not one_warpgroup"):
        LatentHopperTile(row_split=True, one_warpgroup=True, warp_specialized=True)
    with pytest.raises(ValueError, match="scores_ahead must be left open"):
        LatentHopperTile(row_split=False, scores_ahead=False, warp_specialized=True)
    # Alternating: a schedule of the warp-specialised tile, 64-key blocks only.
    assert LatentHopperConfig(alternating=True).problem_with(latent_spec()) is None
    assert LatentHopperConfig(block_n=64, alternating=True).problem_with(gla2) is None
    assert LatentHopperConfig(alternating=True).tile_for(gla2, 64).block_n == 64  # 128 where the choice is open
    assert "warp-specialised" in LatentHopperConfig(warp_specialized=False, alternating=True).problem_with(gla2)
    assert "warp-specialised" in LatentHopperConfig(row_split=True, alternating=True).problem_with(gla2)
    assert "64-key blocks" in LatentHopperConfig(block_n=128, alternating=True).problem_with(gla2)
    with pytest.raises(ValueError, match="warp-specialised"):
        LatentHopperTile(row_split=False, alternating=True)
    with pytest.raises(ValueError, match="64-key blocks"):
        LatentHopperTile(row_split=False, block_n=128, warp_specialized=True, alternating=True)


def test_rescaled_splits_count_the_one_warpgroup_programs():
    """A tuned entry moved to a neighbouring batch keeps programs x splits: the one-warpgroup tile's 64-row programs
    (GLA-2 at Lq 2: two a latent head) count, not the 128-row tile's one."""
    gla2 = latent_spec(latent_heads=2, width=256)
    one = LatentHopperConfig(8, True, 64, one_warpgroup=True)
    assert LATENT_HOPPER.programs_per_split(gla2, shape(batch=4, query_len=2), one) == 16
    assert LATENT_HOPPER.programs_per_split(gla2, shape(batch=4, query_len=2), LatentHopperConfig(8, True, 64)) == 8
    rescaled = LATENT_HOPPER.rescale_config(one, gla2, shape(batch=4, query_len=2, capacity=65536),
                                            shape(batch=16, query_len=2, capacity=65536))
    assert rescaled == LatentHopperConfig(2, True, 64, one_warpgroup=True)


def test_one_warpgroup_tile_shape():
    """64 rows, 4 warps, 64-key blocks in two stages; the query's rope part is not in shared memory (what it
    allocates, compiled: test_one_warpgroup_kernel_compiles_into_half_an_sm)."""
    tile = LatentHopperConfig(row_split=True, one_warpgroup=True).tile_for(latent_spec(latent_heads=2, width=256), 64)
    assert (tile.block_m, tile.block_n, tile.num_warps) == (64, 64, 4)
    assert tile.num_stages(256, 64) == 2
    source = render_latent_hopper_kernel(latent_spec(latent_heads=2, width=256), tile)
    assert "qr_smem = gl.allocate_shared_memory" not in source and "warps_per_cta=[4, 1]" in source
    assert "warps_per_cta=[8, 1]" in render_latent_hopper_kernel(latent_spec(latent_heads=2, width=256),
                                                                  LatentHopperTile(row_split=True))


def test_tiles_and_specs_that_cannot_hold_their_blocks():
    with pytest.raises(ValueError, match="cannot take copies of 48 keys"):
        LatentHopperTile(False, copy_rows=48)
    with pytest.raises(ValueError, match="cannot take copies of 128 keys"):
        LatentHopperTile(False, copy_rows=128)  # more keys a copy than a block holds
    # Two 64-key stages beside MLA's query tile leave no room for a 128-wide rope key: the portable kernels run it.
    assert "no room for two key-block stages" in spec_problem(latent_spec(rope=128), shape())
    assert spec_problem(latent_spec(latent_heads=2, width=256, rope=128), shape()) is None
    # Splits past the keys' blocks are useless; an open block size counts as the one it resolves to.
    gla2 = latent_spec(latent_heads=2, width=256)
    assert LATENT_HOPPER.longest_useful_splits(gla2, shape(capacity=8192), LatentHopperConfig()) == 64
    assert LATENT_HOPPER.longest_useful_splits(gla2, shape(capacity=8192), LatentHopperConfig(block_n=64)) == 128


def test_config_round_trip_leaves_out_an_open_block_size():
    assert LatentHopperConfig(3, False).to_dict() == {"num_splits": 3, "row_split": False}
    one = LatentHopperConfig(3, True, 64, one_warpgroup=True)
    assert one.to_dict() == {"num_splits": 3, "row_split": True, "block_n": 64, "one_warpgroup": True}
    assert LatentHopperConfig.from_dict(one.to_dict()) == one
    # An entry without the field (None) is the same config as one with False: equal, same hash, same tile.
    absent, off = LatentHopperConfig(3, True, 64, one_warpgroup=None), LatentHopperConfig(3, True, 64, one_warpgroup=False)
    assert absent == off and hash(absent) == hash(off) and absent.one_warpgroup is False
    assert LatentHopperConfig.from_dict({"num_splits": 3, "row_split": False}) == LatentHopperConfig(3, False)
    # warp_specialized: absent from an entry of the shared tile (tuned before it was a choice) leaves it open, and
    # the tile runs warp-specialised; an explicit False (the other form) round-trips; a row-owned tile has no
    # such choice (absent reads as False, and stays out).
    open_form = LatentHopperConfig(3, False, 64)
    assert open_form.warp_specialized is None and open_form.tile_for(latent_spec(), 64).warp_specialized
    assert open_choices(open_form) == ("warp_specialized", "alternating")
    for form in (True, False):
        explicit = LatentHopperConfig(3, False, 64, warp_specialized=form)
        assert explicit.to_dict()["warp_specialized"] is form
        assert LatentHopperConfig.from_dict(explicit.to_dict()) == explicit
        assert explicit.tile_for(latent_spec(), 64).warp_specialized is form
    rows = LatentHopperConfig(3, True, 64)
    assert rows.warp_specialized is False and "warp_specialized" not in rows.to_dict()
    assert open_choices(rows) == ("lazy_rescale",)  # the row-owned tile's own choice, made after these entries
    # alternating: absent from a warp-specialised entry (tuned before it was a choice) leaves it open and runs the
    # score / value split; explicit values round-trip; without warp specialisation there is no such choice.
    tuned_ws = LatentHopperConfig(3, False, 64, warp_specialized=True)
    assert open_choices(tuned_ws) == ("alternating",) and not tuned_ws.tile_for(latent_spec(), 64).alternating
    for schedule in (True, False):
        explicit = LatentHopperConfig(3, False, 64, warp_specialized=True, alternating=schedule)
        assert explicit.to_dict()["alternating"] is schedule and not open_choices(explicit)
        assert LatentHopperConfig.from_dict(explicit.to_dict()) == explicit
        assert explicit.tile_for(latent_spec(), 64).alternating is schedule
    for no_choice in (rows, LatentHopperConfig(3, False, 64, warp_specialized=False)):
        assert no_choice.alternating is False and "alternating" not in no_choice.to_dict()
    assert LATENT_HOPPER.resolved_config(open_form, latent_spec()) == LatentHopperConfig(3, False, 64, warp_specialized=True,
                                                                                        alternating=False)
    explicit = LatentHopperConfig(3, False, block_n=128)
    assert LatentHopperConfig.from_dict(explicit.to_dict()) == explicit


def test_explicit_config_off_hopper_is_a_clear_error():
    spec = latent_spec(heads=16, width=256, rope=32)
    q, q_rope, k_cache, k_rope = operands(spec, 64)
    page_table = torch.arange(4, dtype=torch.int32).view(2, 2)
    with pytest.raises(ValueError, match="config: the latent_hopper kernels cannot run this call"):
        glacompiler.attention_with_kvcache_config(q, k_cache, q_rope=q_rope, k_rope_cache=k_rope, page_table=page_table,
                                                  config=LatentHopperConfig())


def test_the_op_picks_the_hopper_kernel_where_it_applies(monkeypatch):
    from glacompiler.kernels.portable import PortableConfig
    from glacompiler.op.dispatch import choose_kernel

    monkeypatch.setattr("glacompiler.op.dispatch.device_multiprocessors", lambda device: 132)
    spec = latent_spec()
    q, q_rope, k_cache, k_rope = operands(spec, 64)
    call, big = latent_call(q, q_rope, k_cache, k_rope), shape(batch=128, capacity=8192)
    monkeypatch.setattr(type(LATENT_HOPPER), "supports", lambda *args: None)  # as on an H100
    assert choose_kernel(spec, big, call) == (LATENT_HOPPER, LatentHopperConfig(num_splits=1, block_n=64,
                                                                                warp_specialized=True,
                                                                                alternating=True))
    assert choose_kernel(spec, big, call, 5)[1] == LatentHopperConfig(5, block_n=64, warp_specialized=True,
                                                                      alternating=True)  # explicit splits win
    monkeypatch.setattr(type(LATENT_HOPPER), "supports", lambda *args: "not an sm_90 GPU")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the portable kernels take CPU tensors under the interpreter
    family, config = choose_kernel(spec, big, call)
    assert family.name == "portable" and isinstance(config, PortableConfig)


def test_row_owned_tile_probe_times_valid_configs():
    """benchmarks/row_owned_tile_probe.py's contenders run on GLA-2 at the table config's split count."""
    probe = load_benchmark_script("row_owned_tile_probe")
    contenders = probe.variants(LatentHopperConfig(4, True, 64, one_warpgroup=True))
    assert {tag: (config.lazy_rescale, config.tile_for(GLA2, 64).ping_pong) for tag, config in contenders.items()
            if tag != "table"} == {"one_warpgroup": (False, False), "one_warpgroup_lazy": (True, False),
                                   "ping_pong": (False, True), "ping_pong_lazy": (True, True),
                                   "ping_pong_128": (False, True)}
    for config in contenders.values():
        assert config.problem_with(GLA2) is None and config.num_splits == 4

"""The Hopper latent kernel's launch choices (LatentHopperConfig: split count, row tile, keys per block), its tile
policy (LatentHopperTile: what the template is rendered for) and the heuristic that picks a config untuned.

Tiles: 64 keys per block (one TMA box, one page of a 64-token paged cache), or 128 where the latent is at most
256 wide on the 64-row tile or the ping-pong 128-row tile; a page smaller than the block takes one copy each, down
to 16 keys (a copy lands on a multiple of the 128-byte swizzle's 8-row period, and smaller pages would need more
copies than a block is worth). Rows: 64 shared by two warpgroups, each with half of a latent up to 512 wide:
warp-specialised (the default; one scores whole blocks and runs the softmax while the other takes P through shared
memory, or, alternating, each scores every other block), or both running the same code, each scoring half the
block's keys; or, for latents up to 256 wide, 128 split between them (row_split: in step, or warp-specialised and
taking turns, ping-pong), or 64 owned by a program of one warpgroup, two programs an SM (one_warpgroup).
Shared-memory stages: what 227 KB holds beside the query tile (for one_warpgroup: half of the SM's 228 KB, less the
driver's per-program reserve)."""
from __future__ import annotations

import dataclasses
from typing import Optional

from ...spec import AttentionSpec, ProblemShape
from ..common.splits import MAX_SPLITS, SplitCosts, planned_num_splits
from ..common.tiles import rope_tile_width

BLOCK_N = 64  # keys per block, the default
WIDE_BLOCK_N = 128  # for latents up to 256 wide on the shared 64-row tile and the ping-pong tile (two stages fit)
SM90_SHARED_MEMORY = 232448  # bytes of shared memory a CTA may take on an H100 / H200
SM90_SHARED_MEMORY_PER_SM = 233472  # what an SM holds for all its resident CTAs
SM90_CTA_RESERVE = 1024  # the driver's per-CTA share of it
SHARED_MEMORY_RESERVE = 2048  # mbarriers, the row-max exchange and the compiler's reduction scratch
# A one-warpgroup program's shared memory beside its tiles: the stages' mbarriers (the lazy rescale's one
# reduction adds 128 bytes of scratch, within the ~1 KB that two stages leave: test_lazy_rescale_compiles_for_sm90).
MBARRIER_RESERVE = 128
MIN_PAGE = 16
RESCALE_SLACK = 8.0  # log2 domain: how far a row's max may pass the one P is taken against (lazy_rescale)
ROW_SPLIT_MAX_WIDTH = 256
LATENT_WIDTHS = (256, 512)
NUM_WARPS = 8  # two warpgroups


def latent_copy_rows(page_size: int, block_n: int = BLOCK_N) -> int:
    """Keys per TMA copy of a key block: the whole block, or one page where pages are smaller (0: contiguous)."""
    return min(page_size, block_n) if page_size else block_n


def tile_form_problem(row_split: bool, one_warpgroup: bool, warp_specialized: bool, alternating: bool = False,
                      block_n: int = BLOCK_N, lazy_rescale: bool = False) -> Optional[str]:
    """Why these forms of the row tile do not go together, or None: one warpgroup is a form of the row-owned tile,
    and so is the lazy rescale; warp specialisation one of the shared tile or of the 128-row tile (ping-pong),
    alternating turns one of the warp-specialised shared tile with 64-key blocks."""
    if one_warpgroup and not row_split:
        return "one_warpgroup is a form of the row_split tile (each warpgroup owns its rows)"
    if warp_specialized and one_warpgroup:
        return "warp_specialized takes two warpgroups (the shared tile, or the 128-row tile), not one_warpgroup"
    if alternating and (row_split or not warp_specialized):
        return "alternating is a schedule of the warp-specialised shared tile (warp_specialized, not row_split)"
    if alternating and block_n != BLOCK_N:
        return f"the alternating tile takes {BLOCK_N}-key blocks"
    if lazy_rescale and not row_split:
        return "lazy_rescale is a form of the row-owned tiles (row_split)"
    return None


@dataclasses.dataclass(frozen=True)
class LatentHopperTile:
    row_split: bool  # each warpgroup owns 64 rows (128 a program, or 64 with one_warpgroup); else 64 shared by two
    copy_rows: int = BLOCK_N  # keys per TMA copy (latent_copy_rows)
    # Issue the next block's score product behind this block's PV product (see the template). None: where
    # it timed faster on an H100, MLA's 512-wide latent.
    scores_ahead: Optional[bool] = None
    block_n: int = BLOCK_N  # keys per block
    # The row_split code on 64 rows in a program of one warpgroup, its query's rope part in registers: small
    # enough that two programs share an SM, and one's softmax runs while the other's products take the tensor
    # cores (GLA-2 on an H200 at B128 S8K: 6-7% faster than the 128-row tile at Lq 2 and 4, 15% faster than the
    # shared 64-row tile at Lq 1; benchmarks/RESULTS.md).
    one_warpgroup: bool = False
    # The shared 64-row tile with its warpgroups running different code (templates/latent_hopper/
    # latent_decode_ws.py.jinja): one computes a block's scores over all its keys (one product of N = 64 or 128,
    # where the other form has each warpgroup score half the keys and read the query tile twice as often), the
    # softmax and the left half of the output; the other the right half, and the stages' refills. On an H200 MLA
    # 9-11% faster, GLA-8 at Lq 1 with 128-key blocks 6% (benchmarks/RESULTS.md, "A warp-specialised tile for
    # MLA"). It always issues the next block's scores ahead, and the ping-pong tile never does (scores_ahead must
    # be left open on both).
    # With row_split, the 128-row tile warp-specialised (templates/latent_hopper/latent_decode_pingpong.py.jinja):
    # each warpgroup owns 64 rows as on the one-warpgroup tile, but the two read one copy of each key block and
    # take turns issuing their score products (FlashAttention-3's ping-pong), and a warp of its own refills the
    # stages; the query's rope part is in registers.
    warp_specialized: bool = False
    # The warp-specialised tile's other schedule, FlashMLA's (templates/latent_hopper/latent_decode_alt.py.jinja):
    # the warpgroups take turns, each scoring every other key block and running its softmax while the other's
    # score product holds the tensor cores, and each accumulating one half of the output over every block (a block's
    # P crosses through shared memory relative to its own max); key stages are refilled by halves. 64-key blocks.
    # On an H200 MLA 0.91-0.97x the time of the score/value split at the same splits (benchmarks/RESULTS.md).
    alternating: bool = False
    # Row-owned tiles: the accumulator is rescaled only when some row's block max passes the max its P is taken
    # against by more than RESCALE_SLACK (P then stays under 2^RESCALE_SLACK), as FlashAttention-4 does; past a
    # long cache's first blocks a block skips the multiply of every accumulator element, for one reduction of the
    # rows' verdicts. GLA-2 on one warpgroup, H200: 1.1-2.3% faster at B8 S32K Lq 2/4, B128 S8K Lq 1 and B32 S4K
    # Lq 4, within 0.4% at B128 S8K Lq 2/4 (an H100 had those two 1.4-2.3% faster); the 128-row tile in step 3-9%
    # slower with it, its reduction crossing two warpgroups, the ping-pong tile (one warpgroup's reduction) 0-2%
    # slower on an H100 (benchmarks/RESULTS.md). A tuner's choice: 31 of the H200 table's 118 row-owned entries
    # take it.
    lazy_rescale: bool = False

    def __post_init__(self):
        if self.block_n not in (BLOCK_N, WIDE_BLOCK_N) or self.block_n % self.copy_rows:
            raise ValueError(f"a tile of {self.block_n}-key blocks cannot take copies of {self.copy_rows} keys")
        problem = tile_form_problem(self.row_split, self.one_warpgroup, self.warp_specialized, self.alternating,
                                    self.block_n, self.lazy_rescale)
        if problem:
            raise ValueError(problem)
        if self.warp_specialized and self.scores_ahead is not None:
            raise ValueError("the warp-specialised tiles fix their own score schedule (scores_ahead must be left open)")

    @property
    def num_warps(self) -> int:
        """The kernel's warps outside its warp-specialised region (the score warpgroup's, the even one's when
        alternating, or the first row group's on the ping-pong tile; the other warpgroup's four and the ping-pong
        tile's refill warp come on top)."""
        return 4 if self.one_warpgroup or self.warp_specialized else NUM_WARPS

    @property
    def ping_pong(self) -> bool:
        """The warp-specialised 128-row tile: two row groups taking turns (warp_specialized with row_split)."""
        return self.warp_specialized and self.row_split

    def latent_copy_width(self, head_dim: int) -> int:
        """Latent columns a TMA copy takes: the whole width, or half of it where each half has its own barrier
        (alternating)."""
        return head_dim // 2 if self.alternating else head_dim

    def issues_scores_ahead(self, head_dim: int) -> bool:
        return head_dim == 512 and not self.row_split if self.scores_ahead is None else self.scores_ahead

    @property
    def block_m(self) -> int:
        return 128 if self.row_split and not self.one_warpgroup else 64

    def stages_that_fit(self, head_dim: int, rope_width: int) -> int:
        """Key blocks the shared memory holds beside the query tile and P (one_warpgroup: beside the query's
        latent part in half an SM; its rope part and P are in registers; alternating: beside the query's latent
        part and two blocks' P, its rope part in registers; ping-pong: beside the query's latent part, its rope part
        and P in registers)."""
        element = 2  # bf16 / fp16
        row_bytes = (head_dim + rope_width) * element
        if self.one_warpgroup:
            free = (SM90_SHARED_MEMORY_PER_SM // 2 - SM90_CTA_RESERVE - MBARRIER_RESERVE
                    - self.block_m * head_dim * element)
            return free // (self.block_n * row_bytes)
        if self.alternating:  # the query's latent part (its rope part is in registers) and two blocks' P
            query_and_p = self.block_m * head_dim * element + 2 * self.block_m * self.block_n * element
        elif self.ping_pong:  # the query's latent part; its rope part and P are in registers
            query_and_p = self.block_m * head_dim * element
        else:
            query_and_p = self.block_m * row_bytes + (0 if self.row_split else self.block_m * self.block_n * element)
        free = SM90_SHARED_MEMORY - SHARED_MEMORY_RESERVE - query_and_p
        return free // (self.block_n * row_bytes)

    def holds_two_stages(self, spec: AttentionSpec) -> bool:
        """Whether two key-block stages fit beside the query tile of this spec (what the pipeline needs)."""
        return self.stages_that_fit(spec.head_dim_k, rope_tile_width(spec.rope_dim)) >= 2

    def num_stages(self, head_dim: int, rope_width: int) -> int:
        """Key-block stages: as many as fit (2 for MLA's 512-wide latent, 4 for a 256-wide one over 64 rows or
        on the ping-pong tile, 3 over 128; 2 for 128-key blocks of a 256-wide one, and on one warpgroup), at most 4;
        alternating: one a warpgroup's blocks."""
        if self.alternating:
            return 2
        return max(2, min(4, self.stages_that_fit(head_dim, rope_width)))


def preferred_block_n(spec: AttentionSpec, row_split: bool) -> int:
    """Keys per block where a config leaves it open: 128 where two such stages fit, which is on the 64-row tile
    of a latent up to 256 wide (the score products are twice as wide, and a block's fixed costs are shared by twice
    the keys: 12-21% faster on an H200 for GLA-2 and GLA-8 at every shape timed before the tile was
    warp-specialised, benchmarks/RESULTS.md), else 64 (MLA's 512-wide latent, one warpgroup and the 128-row tile in
    step have no room for them; on the ping-pong tile, which has, an open block size reads as 64 too, as in tables
    written before that tile was a choice, and the heuristic names 128)."""
    fits = LatentHopperTile(row_split, block_n=WIDE_BLOCK_N).holds_two_stages(spec)
    return WIDE_BLOCK_N if fits and not row_split and spec.head_dim_k <= ROW_SPLIT_MAX_WIDTH else BLOCK_N


@dataclasses.dataclass(frozen=True)
class LatentHopperConfig:
    """Launch choice for the Hopper latent kernel."""

    num_splits: int = 1
    # Each warpgroup owns 64 rows (latents up to 256 wide): 128-row tiles, or 64-row programs with one_warpgroup.
    row_split: bool = False
    # Keys per block, BLOCK_N or WIDE_BLOCK_N; None: preferred_block_n (the heuristic's choice, and that of
    # tables tuned before the block size was a choice).
    block_n: Optional[int] = None
    # With row_split: 64-row programs of one warpgroup, two an SM (LatentHopperTile.one_warpgroup). Optional for
    # the tables: their entries tuned before it was a choice leave it out and hold the other tiles (None reads
    # as False).
    one_warpgroup: Optional[bool] = None
    # Without row_split: the warp-specialised form of the shared 64-row tile (LatentHopperTile.warp_specialized).
    # None (tables tuned before it was a choice): the form the family prefers, warp-specialised. With row_split
    # (not one_warpgroup): the ping-pong 128-row tile; None (tables tuned before it was a choice) reads as False.
    warp_specialized: Optional[bool] = None
    # The warp-specialised shared tile's alternating schedule (LatentHopperTile.alternating). None (tables tuned before
    # it was a choice) reads as False; without warp specialisation, or on the 128-row tile, there is no choice and it
    # reads as False.
    alternating: Optional[bool] = None
    # Row-owned tiles: rescale the accumulator only where a row's max grew by more than the slack
    # (LatentHopperTile.lazy_rescale). None (tables tuned before it was a choice) reads as False; without row_split
    # there is no choice and it reads as False.
    lazy_rescale: Optional[bool] = None

    def tile_for(self, spec: AttentionSpec, page_size: int) -> LatentHopperTile:
        block_n = self.block_n or (BLOCK_N if self.alternating else preferred_block_n(spec, self.row_split))
        return LatentHopperTile(self.row_split, latent_copy_rows(page_size, block_n), block_n=block_n,
                                one_warpgroup=self.one_warpgroup, warp_specialized=self.runs_warp_specialized,
                                alternating=bool(self.alternating), lazy_rescale=bool(self.lazy_rescale))

    @property
    def runs_warp_specialized(self) -> bool:
        return not self.row_split if self.warp_specialized is None else self.warp_specialized

    @property
    def chooses_alternating(self) -> bool:
        """Whether alternating is a choice: a schedule of the warp-specialised shared tile only."""
        return self.runs_warp_specialized and not self.row_split

    def __post_init__(self):
        object.__setattr__(self, "one_warpgroup", bool(self.one_warpgroup))
        if self.row_split and self.warp_specialized is None:
            object.__setattr__(self, "warp_specialized", False)
        if not self.chooses_alternating and self.alternating is None:
            object.__setattr__(self, "alternating", False)
        if not self.row_split and self.lazy_rescale is None:
            object.__setattr__(self, "lazy_rescale", False)
        if not 1 <= self.num_splits <= MAX_SPLITS:
            raise ValueError(f"num_splits must lie in [1, {MAX_SPLITS}], got {self.num_splits}")
        if self.block_n not in (None, BLOCK_N, WIDE_BLOCK_N):
            raise ValueError(f"block_n must be {BLOCK_N}, {WIDE_BLOCK_N} or None, got {self.block_n}")

    def to_dict(self) -> dict:
        # Open choices stay out, and so do the choices a tile does not have (one_warpgroup off, warp_specialized
        # on a row-owned tile, alternating off where it is no choice, lazy_rescale off on the shared tile), as
        # in tables written before they were choices.
        def left_out(name, value):
            return value is None or (not value and (name == "one_warpgroup"
                                                    or (name == "warp_specialized" and self.row_split)
                                                    or (name == "alternating" and not self.chooses_alternating)
                                                    or (name == "lazy_rescale" and not self.row_split)))

        return {name: value for name, value in dataclasses.asdict(self).items() if not left_out(name, value)}

    @classmethod
    def from_dict(cls, data: dict) -> "LatentHopperConfig":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def problem_with(self, spec: AttentionSpec) -> Optional[str]:
        """Why this config cannot run a spec the kernel otherwise takes, or None."""
        if self.row_split and spec.head_dim_k > ROW_SPLIT_MAX_WIDTH:
            return f"row_split tiles take latents up to {ROW_SPLIT_MAX_WIDTH} wide"
        # (An open block size is 64 under the alternating schedule: tile_for.)
        problem = tile_form_problem(self.row_split, self.one_warpgroup, self.runs_warp_specialized,
                                    bool(self.alternating), self.block_n or BLOCK_N, bool(self.lazy_rescale))
        if problem:
            return problem
        tile = self.tile_for(spec, 0)
        if not tile.holds_two_stages(spec):
            kind = "one-warpgroup " if tile.one_warpgroup else ""
            return (f"{tile.block_n}-key blocks of a {spec.head_dim_k}-wide latent on a {tile.block_m}-row {kind}tile "
                    f"do not fit two stages in shared memory")
        return None


def programs_per_split(spec: AttentionSpec, shape: ProblemShape, row_split: bool, one_warpgroup: bool = False) -> int:
    """Programs a launch runs per KV split: sequences x latent heads x row blocks."""
    rows = spec.group_size * shape.query_len
    block_m = LatentHopperTile(row_split, one_warpgroup=one_warpgroup).block_m
    return shape.batch * spec.num_kv_heads * -(-rows // block_m)


def resident_programs(one_warpgroup: bool) -> int:
    """Programs an SM holds at once: two of one warpgroup (LatentHopperTile.one_warpgroup), else one."""
    return 2 if one_warpgroup else 1


# The split planner's costs (in 64-key reads of one program, COST_KEYS; the combine's per wave for 256-wide values, its
# partial outputs being that much of what it reads), fitted to benchmarks/split_counts.py's ladders of split counts on
# an H200 (benchmarks/logs/split_counts_h200_6e414cd.txt; tests/test_split_counts.py): at each of its 10 cases the
# planned count ran within 0.6% of the ladder's best, where the 75% rule's was up to 1.115x slower (each case held out
# of the fit in turn: within 3.2%, 0.4% on average; benchmarks/fit_split_costs.py).
# Two resident one-warpgroup programs an SM move more bytes than one on an H200 (1.2x: GLA-8 B8 S32K ran 272 us at 4
# splits, 322 at 2) but not on an H100: on its ladders of 10 other shapes (split_counts_heldout_h100_483c94a.txt) the
# three one-warpgroup cases ran fastest at the counts a speed of 1.0 picks, 1.04-1.09x faster than at 1.2's, and its
# table's three GLA-8 B8 S32K pairs agree. So that speed is the card's (fitted to those cases); a card not timed
# takes the H200's.
CO_RESIDENT_SPEEDS = (("H100", 1.0),)
DEFAULT_CO_RESIDENT_SPEED = 1.2


def co_resident_speed(card: str) -> float:
    return next((speed for name, speed in CO_RESIDENT_SPEEDS if name in card), DEFAULT_CO_RESIDENT_SPEED)


def split_costs(spec: AttentionSpec, card: str = "") -> SplitCosts:
    return SplitCosts(program=4.0, combine=2.0, combine_per_wave=3.0 * spec.head_dim_v / 256,
                      co_resident_speed=co_resident_speed(card))


def heuristic_config(spec: AttentionSpec, shape: ProblemShape, multiprocessors: int,
                     card: str = "") -> LatentHopperConfig:
    """Where the latent fits one warpgroup's accumulator: the ping-pong 128-row tile on 128-key blocks where a latent
    head's rows fill every program's second row group in part at least (rows > 64 and rows % 128 either 0 or above
    64: GLA-2 at Lq 2 and 4 on an H100 ran 1.04-1.11x faster than the one-warpgroup tile at the table's split count,
    and 1.04-1.05x faster than FlashAttention-3, where its programs fill the GPU; benchmarks/RESULTS.md; a program
    with an empty second group, as at Lq 3, was not timed); otherwise 64-row programs of one warpgroup, two an SM
    (faster than the 128-row tile in step at every GLA-2 shape timed on an H200, and than the shared 64-row tile
    from B128 S8K or caches of 32K up; the H200 table's tuning took it for 32 of the 38 GLA-8 buckets of 16 and 32
    rows, up to 1.20x faster, the shared tile keeping a few small-work ones, short caches at B 1/8); otherwise the
    shared 64-row tile, warp-specialised, with alternating turns for MLA's 512-wide latent (0.91-0.97x the
    score/value split's time on an H200). Then the split count of least modelled time (planned_num_splits, with the
    card's costs: split_costs); the preferred block size. (Where a tile's two stages do not fit, the next one: the
    ping-pong tile's 64-key blocks, the 128-row tile in step.)"""
    rows = spec.group_size * shape.query_len
    narrow = spec.head_dim_k <= ROW_SPLIT_MAX_WIDTH
    # Each only where two key stages fit beside its query (a rope key wider than 64 leaves one stage on one
    # warpgroup); the shared 64-row tile always fits a spec the family takes (support.py).
    second_groups_hold_rows = rows > 64 and (rows % 128 == 0 or rows % 128 > 64)
    ping_pong_block = next((block for block in (WIDE_BLOCK_N, BLOCK_N) if narrow and second_groups_hold_rows
                            and LatentHopperTile(True, block_n=block, warp_specialized=True).holds_two_stages(spec)),
                           None)
    one_warpgroup = (ping_pong_block is None and narrow
                     and LatentHopperTile(True, one_warpgroup=True).holds_two_stages(spec))
    row_split = (ping_pong_block is not None or one_warpgroup
                 or (narrow and rows > 64 and LatentHopperTile(True).holds_two_stages(spec)))
    # The shared tile of a latent wider than one warpgroup's accumulator holds (MLA) takes turns; narrower ones
    # (a rope key too wide for the row-owned tiles) keep the score/value split and its 128-key blocks.
    alternating = (not row_split and not narrow
                   and LatentHopperTile(False, warp_specialized=True, alternating=True).holds_two_stages(spec))
    block_n = ping_pong_block or (BLOCK_N if alternating else preferred_block_n(spec, row_split))
    # The planner cuts splits into whole blocks of the tile's, as the kernel does (so none is left empty).
    splits = planned_num_splits(programs_per_split(spec, shape, row_split, one_warpgroup), shape.capacity, block_n,
                                multiprocessors, split_costs(spec, card), resident_programs(one_warpgroup))
    if ping_pong_block is not None:
        return LatentHopperConfig(splits, True, block_n, False, warp_specialized=True, lazy_rescale=False)
    return LatentHopperConfig(splits, row_split, block_n, one_warpgroup, warp_specialized=not row_split,
                              alternating=alternating, lazy_rescale=False)

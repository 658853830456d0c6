"""The search space of one tuning study: for a spec and a shape bucket, the values of each KernelConfig knob
worth trying. Only values the kernel accepts for that spec, and no tile far larger than the work."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
from typing import Iterator, Optional, Sequence

from ..codegen import MIN_DOT_WIDTH, dv_part_width
from ..config import MAX_SPLITS, KernelConfig, next_power_of_two
from ..spec import AttentionSpec
from ..validation import ProblemShape

# Split counts tried: roughly geometric, so the short budgets still cover 1..64.
SPLIT_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
# Waves of programs beyond which more splits only add combine work.
MAX_WAVES = 4
# A split shorter than this many keys costs more in the combine than it saves.
MIN_KEYS_PER_SPLIT = 64
MAX_BLOCK_M = 128
MAX_BLOCK_D = 256
# Smallest program tile kept relative to the packed rows: block_m below rows/8 re-reads each key block from L2
# more than eight times.
ROW_TILE_SPREAD = 8


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Categorical choices per KernelConfig field (knobs outside `choices` keep the base config's value)."""

    choices: tuple  # ((field name, (values...)), ...) in a fixed order

    @property
    def names(self) -> tuple:
        return tuple(name for name, _ in self.choices)

    def values(self, name: str) -> tuple:
        return dict(self.choices)[name]

    def size(self) -> int:
        total = 1
        for _, values in self.choices:
            total *= len(values)
        return total

    def signature(self) -> str:
        """Short hash of the choices: a study stored for another space is not resumed into this one."""
        return hashlib.sha256(repr(self.choices).encode()).hexdigest()[:8]

    def params(self, config: KernelConfig) -> dict:
        return {name: getattr(config, name) for name in self.names}

    def contains(self, config: KernelConfig) -> bool:
        return all(getattr(config, name) in values for name, values in self.choices)

    def config(self, params: dict, base: KernelConfig) -> KernelConfig:
        return dataclasses.replace(base, **{name: params[name] for name in self.names})

    def suggest(self, trial, base: KernelConfig) -> KernelConfig:
        """Sample one config with an Optuna trial (one categorical parameter per knob)."""
        return self.config({name: trial.suggest_categorical(name, list(values)) for name, values in self.choices}, base)

    def configs(self, base: KernelConfig) -> Iterator[KernelConfig]:
        """Every config of the space (for exhaustive checks on small spaces)."""
        for combination in itertools.product(*(values for _, values in self.choices)):
            yield self.config(dict(zip(self.names, combination)), base)

    def snap(self, config: KernelConfig) -> Optional[KernelConfig]:
        """The config with its split count moved to the nearest choice, or None when another knob is outside
        the space (used to seed a study with configs tuned for neighbouring buckets)."""
        splits = self.values("num_splits")
        nearest = min(splits, key=lambda s: (abs(s - config.num_splits), s))
        snapped = dataclasses.replace(config, num_splits=nearest)
        return snapped if self.contains(snapped) else None

    def split_neighbours(self, num_splits: int, count: int = 2) -> list:
        """Up to `count` split choices on each side of num_splits (for the refinement after the main search)."""
        splits = self.values("num_splits")
        if num_splits not in splits:
            return []
        index = splits.index(num_splits)
        return list(splits[max(0, index - count):index]) + list(splits[index + 1:index + 1 + count])


def _powers_of_two(low: int, high: int) -> list:
    values = []
    value = low
    while value <= high:
        values.append(value)
        value *= 2
    return values


def split_choices(spec: AttentionSpec, shape: ProblemShape, multiprocessors: int, widest_block_m: int) -> list:
    """Split counts up to the useful maximum: enough programs for MAX_WAVES waves at the fewest programs per
    split, and no split shorter than MIN_KEYS_PER_SPLIT keys."""
    rows = spec.group_size * shape.query_len
    fewest_programs = shape.batch * spec.num_kv_heads * -(-rows // widest_block_m)
    by_parallelism = -(-MAX_WAVES * multiprocessors // fewest_programs)
    by_length = max(1, shape.capacity // MIN_KEYS_PER_SPLIT)
    cap = max(1, min(MAX_SPLITS, by_parallelism, by_length))
    return [s for s in SPLIT_LADDER if s <= cap]


def build_search_space(
    spec: AttentionSpec,
    shape: ProblemShape,
    multiprocessors: int,
    include: Sequence[KernelConfig] = (),
) -> SearchSpace:
    """The space for one (spec, bucket). Every config in `include` (the heuristic default) lies inside it."""
    rows = spec.group_size * shape.query_len
    top_m = min(MAX_BLOCK_M, max(MIN_DOT_WIDTH, next_power_of_two(rows)))
    block_m = _powers_of_two(max(MIN_DOT_WIDTH, top_m // ROW_TILE_SPREAD), top_m)
    block_n = _powers_of_two(MIN_DOT_WIDTH, min(128, max(MIN_DOT_WIDTH, next_power_of_two(shape.capacity))))
    widest = max(spec.head_dim_q, spec.head_dim_v)
    block_d = _powers_of_two(32, min(MAX_BLOCK_D, max(32, next_power_of_two(widest))))
    # Splitting the output dims only pays where the accumulator is wide; parts stay >= 32 columns.
    dv_split = [s for s in (1, 2, 4) if s == 1 or (spec.head_dim_v >= 128 and dv_part_width(spec.head_dim_v, s) >= 32)]
    num_warps = [4, 8] + ([16] if spec.head_dim_v >= 256 else [])
    choices = {
        "block_m": block_m,
        "block_n": block_n,
        "block_d": block_d,
        "dv_split": dv_split,
        "num_splits": split_choices(spec, shape, multiprocessors, top_m),
        "num_warps": num_warps,
        # Triton 3.9 emits the same code for num_stages 1 to 3 here (the paged loads go through registers, the
        # pipeliner adds no stages): keep two values, so a Triton that does pipeline can still show a gain.
        "num_stages": [2, 3],
        "preload_q": [False, True],
    }
    for config in include:
        for name, values in choices.items():
            if getattr(config, name) not in values:
                values.append(getattr(config, name))
    return SearchSpace(tuple((name, tuple(sorted(values))) for name, values in choices.items()))

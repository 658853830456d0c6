"""The search space of one tuning study: for a spec and a shape bucket, the values worth trying of each knob
of a family's config (a frozen dataclass). Each family builds its own (search_space in its package); the
split ladder is shared."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
from typing import Any, Iterator, Optional, Sequence

Config = Any  # a family's frozen config dataclass

from ...spec import AttentionSpec, ProblemShape
from .splits import MAX_SPLITS

# Split counts tried: roughly geometric, so the short budgets still cover 1..MAX_SPLITS.
SPLIT_LADDER = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
# Waves of programs beyond which more splits only add combine work.
MAX_WAVES = 4
# A split shorter than this many keys costs more in the combine than it saves.
MIN_KEYS_PER_SPLIT = 64


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """Categorical choices per config field (knobs outside `choices` keep the base config's value)."""

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

    def params(self, config: Config) -> dict:
        return {name: getattr(config, name) for name in self.names}

    def contains(self, config: Config) -> bool:
        return all(getattr(config, name) in values for name, values in self.choices)

    def config(self, params: dict, base: Config) -> Config:
        return dataclasses.replace(base, **{name: params[name] for name in self.names})

    def suggest(self, trial, base: Config) -> Config:
        """Sample one config with an Optuna trial (one categorical parameter per knob)."""
        return self.config({name: trial.suggest_categorical(name, list(values)) for name, values in self.choices}, base)

    def configs(self, base: Config) -> Iterator[Config]:
        """Every config of the space (for exhaustive checks on small spaces)."""
        for combination in itertools.product(*(values for _, values in self.choices)):
            yield self.config(dict(zip(self.names, combination)), base)

    def snap(self, config: Config) -> Optional[Config]:
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


def split_choices(spec: AttentionSpec, shape: ProblemShape, multiprocessors: int, widest_block_m: int) -> list:
    """Split counts up to the useful maximum: enough programs for MAX_WAVES waves at the fewest programs per
    split (the widest row tile), and no split shorter than MIN_KEYS_PER_SPLIT keys."""
    rows = spec.group_size * shape.query_len
    fewest_programs = shape.batch * spec.num_kv_heads * -(-rows // widest_block_m)
    by_parallelism = -(-MAX_WAVES * multiprocessors // fewest_programs)
    by_length = max(1, shape.capacity // MIN_KEYS_PER_SPLIT)
    cap = max(1, min(MAX_SPLITS, by_parallelism, by_length))
    return [s for s in SPLIT_LADDER if s <= cap]


def include_configs(choices: dict, include: Sequence[Config]) -> SearchSpace:
    """The space of `choices` ({field: [values]}), widened so that every config in `include` (the heuristic
    default) lies inside it."""
    for config in include:
        for name, values in choices.items():
            if getattr(config, name) not in values:
                values.append(getattr(config, name))
    return SearchSpace(tuple((name, tuple(sorted(values))) for name, values in choices.items()))

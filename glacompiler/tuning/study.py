"""One Optuna study per (kernel family, spec, shape bucket): sample configs from the family's search space, prune
what its resource check says cannot run,
time the rest, prune the clearly slow early, and pick the fastest config whose output matches the default's.

The objective is injected (a ConfigEvaluator): on a GPU it is benchmark.KernelBenchmark, in tests a synthetic
cost surface. Trials live in an Optuna storage (a JournalStorage file for real runs), so a run that is killed
resumes where it stopped: the budget counts the trials already stored.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Optional, Protocol, Sequence, TextIO

import optuna
from optuna.trial import TrialState

from ..kernels import PORTABLE_FAMILY_NAME, family_named
from ..kernels.common.device_limits import DeviceLimits
from ..kernels.common.search_space import SearchSpace
from ..kernels.family import Config, KernelFamily
from ..spec import AttentionSpec, ProblemShape
from ..tables.table_file import Bucket, TableEntry

MAX_POLISH_ROUNDS = 4

# Optuna >= 5 takes constraints from the trial; older versions from a sampler callback.
_TRIAL_HAS_SET_CONSTRAINT = hasattr(optuna.trial.Trial, "set_constraint")
CONSTRAINT_ATTR = "resource_excess"


class ConfigEvaluator(Protocol):
    """What a study needs from the thing it tunes."""

    def time_us(self, config: Config, quick: bool) -> float:
        """Median time of one call in microseconds; quick = a short first look. Raises when the config does
        not compile or launch."""

    def output_mismatch(self, config: Config, reference: Config) -> Optional[str]:
        """None when config's output matches reference's (the FlashAttention tolerance rule), else why not."""

    # Optional: timing (str), the name of time_us's method; a study's journal is resumed only under the same one.


class KernelFailure(Exception):
    """A config that failed to compile or run: the trial is recorded as FAIL and the study goes on."""


class DeviceLost(Exception):
    """The GPU context is unusable (illegal address, launch failure): every later trial would fail too."""


_FATAL_CUDA_MESSAGES = ("illegal memory access", "unspecified launch failure", "device-side assert",
                        "misaligned address", "illegal instruction")


@dataclasses.dataclass(frozen=True)
class TuningBudget:
    trials: int = 24  # configs compiled and timed per bucket; resource-pruned and repeated ones are free
    time_s: Optional[float] = None  # wall clock for this bucket
    prune_ratio: float = 1.5  # a quick look slower than this x the best so far ends the trial
    polish_share: float = 0.25  # of the trials, kept for the one-knob-at-a-time walk from the best config
    refine_splits: bool = True  # at the end, try the split counts next to the best config's (no recompiling)
    check_candidates: int = 3  # fastest configs checked against the default's output before giving up
    confirm_rounds: int = 2  # alternate timings of the default and the winner, recorded as their times
    sample_limit_factor: int = 10  # at most trials x this many sampled (pruned or repeated) trials


@dataclasses.dataclass
class BucketResult:
    family: str
    spec: AttentionSpec
    shape: ProblemShape
    config: Config
    tuned_us: float
    default_config: Config
    default_us: float
    evaluated: int  # trials that compiled and ran, or failed trying
    failed: int
    resource_pruned: int
    slow_pruned: int
    rejected: list  # [{"config": dict, "us": float, "reason": str}]
    study_name: str

    @property
    def speedup(self) -> float:
        return self.default_us / self.tuned_us

    def to_entry(self) -> TableEntry:
        return TableEntry(
            family=self.family,
            spec=self.spec,
            bucket=Bucket(self.shape.batch, self.shape.capacity, self.shape.query_len),
            page_size=self.shape.page_size,
            config=self.config,
            tuned_us=self.tuned_us,
            default_config=self.default_config,
            default_us=self.default_us,
            trials=self.evaluated,
            rejected=self.rejected,
        )


def study_name(family: KernelFamily, spec: AttentionSpec, shape: ProblemShape, space: SearchSpace, gpu: str,
               timing: str = "") -> str:
    return (f"{family.name}|{spec.key()}|b{shape.batch}-s{shape.capacity}-q{shape.query_len}-p{shape.page_size}"
            f"|{gpu}|kernels-{family.kernels_version()}|space-{space.signature()}" + (f"|timing-{timing}" if timing else ""))


def _describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


def _constraints_from_attrs(trial: optuna.trial.FrozenTrial) -> Sequence[float]:
    return (trial.user_attrs.get(CONSTRAINT_ATTR, 0.0),)


def make_sampler(seed: int, startup_trials: int) -> optuna.samplers.BaseSampler:
    """Multivariate TPE that learns from the resource-model constraint (infeasible trials rank worst)."""
    options = dict(seed=seed, n_startup_trials=startup_trials, multivariate=True)
    if not _TRIAL_HAS_SET_CONSTRAINT:
        options["constraints_func"] = _constraints_from_attrs
    return optuna.samplers.TPESampler(**options)


def _set_constraint(trial: optuna.trial.Trial, value: float) -> None:
    trial.set_user_attr(CONSTRAINT_ATTR, value)
    if _TRIAL_HAS_SET_CONSTRAINT:
        trial.set_constraint(CONSTRAINT_ATTR, value)


class _Progress:
    """One line per evaluated trial: a bar of the trial budget, the best and the default time."""

    def __init__(self, stream: Optional[TextIO], label: str, trials: int):
        self.stream, self.label, self.trials = stream, label, trials
        self.started = time.monotonic()

    def update(self, evaluated: int, best: Optional[float], default: Optional[float], note: str = "") -> None:
        if self.stream is None:
            return
        width = 20
        filled = min(width, round(width * evaluated / max(1, self.trials)))
        count = f"{evaluated}/{self.trials}" if evaluated <= self.trials else \
            f"{self.trials}/{self.trials} +{evaluated - self.trials} split counts"
        parts = [f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {count}"]
        if best is not None:
            parts.append(f"best {best:.1f} us")
        if default is not None:
            parts.append(f"default {default:.1f} us")
            if best is not None:
                parts.append(f"x{default / best:.2f}")
        parts.append(f"{time.monotonic() - self.started:.0f} s")
        if note:
            parts.append(note)
        print("  ".join(parts), file=self.stream, flush=True)


def _trials(study: optuna.Study, states=None) -> list:
    return study.get_trials(deepcopy=False, states=states)


def _count_evaluated(study: optuna.Study) -> int:
    return sum(1 for t in _trials(study) if t.user_attrs.get("evaluated"))


def _best_value(study: optuna.Study) -> Optional[float]:
    values = [t.value for t in _trials(study, (TrialState.COMPLETE,))]
    return min(values) if values else None


class _Objective:
    def __init__(self, family, spec, space, base, evaluator, limits, budget, default_params):
        self.family, self.spec, self.space, self.base = family, spec, space, base
        self.evaluator, self.limits, self.budget = evaluator, limits, budget
        self.default_params = default_params

    def _default_value(self, study: optuna.Study) -> Optional[float]:
        for t in _trials(study, (TrialState.COMPLETE,)):
            if t.params == self.default_params:
                return t.value
        return None

    def _earlier_trial(self, study: optuna.Study, trial: optuna.trial.Trial) -> Optional[optuna.trial.FrozenTrial]:
        """A finished trial with the same params (TPE resamples on small categorical spaces)."""
        for t in _trials(study, (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
            if t.number != trial.number and t.params == trial.params and t.user_attrs.get("evaluated"):
                return t
        return None

    def _record_compiled(self, trial: optuna.trial.Trial, config: Config) -> None:
        """What the compiler really used, next to the model's "model" attribute (for checking the model on
        the Triton of the GPU machine from the journal)."""
        compiled_resources = getattr(self.evaluator, "compiled_resources", None)
        used = compiled_resources(config) if compiled_resources is not None else None
        if used:
            trial.set_user_attr("compiled", {key: value if isinstance(value, (int, float)) else str(value)
                                             for key, value in used.items()})

    def __call__(self, trial: optuna.trial.Trial) -> float:
        config = self.space.suggest(trial, self.base)
        check = self.family.resource_check(self.spec, config, self.limits)
        excess = check.excess
        earlier = self._earlier_trial(trial.study, trial)
        is_default = trial.params == self.default_params
        if earlier is not None and earlier.state == TrialState.FAIL:
            excess = max(excess, 1.0)  # failed to compile or launch: as infeasible as the model's rejects
        elif is_default:
            excess = min(excess, 0.0)  # timed whatever the model says: it is the baseline, and what runs untuned
        _set_constraint(trial, excess)
        if excess > 0:
            reason = f"repeat of failed trial {earlier.number}" if earlier is not None else \
                f"resources: {check.description}"
            trial.set_user_attr("pruned", reason)
            raise optuna.TrialPruned()
        if earlier is not None:
            trial.set_user_attr("repeat_of", earlier.number)
            if earlier.state == TrialState.COMPLETE:
                return earlier.value
            if earlier.intermediate_values:
                trial.report(earlier.intermediate_values[0], 0)
            raise optuna.TrialPruned()

        trial.set_user_attr("evaluated", True)
        trial.set_user_attr("model", check.model)
        study = trial.study
        best = _best_value(study)
        try:
            quick = self.evaluator.time_us(config, quick=True)
            self._record_compiled(trial, config)
            trial.report(quick, 0)
            if best is not None and quick > self.budget.prune_ratio * best:
                trial.set_user_attr("pruned", f"slow: {quick:.1f} us > {self.budget.prune_ratio} x best {best:.1f} us")
                raise optuna.TrialPruned()
            value = self.evaluator.time_us(config, quick=False)
        except optuna.TrialPruned:
            raise
        except Exception as error:
            description = _describe(error)
            trial.set_user_attr("error", description)
            self._record_compiled(trial, config)
            if any(message in description.lower() for message in _FATAL_CUDA_MESSAGES):
                raise DeviceLost(f"config {config} broke the GPU context: {description}") from error
            raise KernelFailure(description) from error
        if not (value > 0 and math.isfinite(value)):
            trial.set_user_attr("error", f"bad timing {value!r}")
            raise KernelFailure(f"bad timing {value!r}")
        return value


def tune_bucket(
    spec: AttentionSpec,
    shape: ProblemShape,
    evaluator: ConfigEvaluator,
    limits: DeviceLimits,
    *,
    budget: TuningBudget = TuningBudget(),
    storage: Optional[optuna.storages.BaseStorage] = None,
    default_config: Optional[Config] = None,
    seed_configs: Sequence[Config] = (),
    seed: int = 0,
    progress: Optional[TextIO] = None,
    family: Optional[KernelFamily] = None,
) -> Optional[BucketResult]:
    """Tune one bucket of a kernel family (default: the portable kernels). Returns None when the default
    config itself fails (nothing to compare against)."""
    started = time.monotonic()
    family = family or family_named(PORTABLE_FAMILY_NAME)
    if default_config is None:
        default_config = family.heuristic_config(spec, shape, limits.multiprocessors, limits.name)
    space = family.search_space(spec, shape, limits.multiprocessors, include=[default_config])
    name = study_name(family, spec, shape, space, limits.name, getattr(evaluator, "timing", ""))
    with _quiet_optuna():
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=make_sampler(seed, startup_trials=max(4, budget.trials // 4)),
            direction="minimize",
            load_if_exists=True,
        )
    default_params = space.params(default_config)
    # The heuristic first (the baseline every speed-up is measured against), then configs tuned for
    # neighbouring buckets; skip_if_exists keeps a resumed study from queueing them twice.
    study.enqueue_trial(default_params, skip_if_exists=True)
    for config in seed_configs:
        snapped = space.snap(config)
        if snapped is not None:
            study.enqueue_trial(space.params(snapped), skip_if_exists=True)

    label = f"{spec.kind} hq{spec.num_q_heads}/{spec.num_kv_heads} {Bucket(shape.batch, shape.capacity, shape.query_len).label()}"
    bar = _Progress(progress, label, budget.trials)
    objective = _Objective(family, spec, space, default_config, evaluator, limits, budget, default_params)

    def time_left() -> Optional[float]:
        return None if budget.time_s is None else budget.time_s - (time.monotonic() - started)

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.user_attrs.get("evaluated"):
            note = "failed" if trial.state == TrialState.FAIL else "pruned (slow)" if trial.state == TrialState.PRUNED else ""
            bar.update(_count_evaluated(study), _best_value(study), objective._default_value(study), note)

    sample_limit = budget.trials * budget.sample_limit_factor
    # TPE gets most of the budget; the rest walks one knob at a time from its best config.
    search_trials = budget.trials - (round(budget.trials * budget.polish_share) if budget.polish_share else 0)

    def stop_at_search_budget(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if _count_evaluated(study) >= search_trials or len(_trials(study)) >= sample_limit:
            study.stop()

    def optimize(n_trials: int, callbacks: list) -> None:
        remaining = time_left()
        if n_trials <= 0 or (remaining is not None and remaining <= 0):
            return
        study.optimize(objective, n_trials=n_trials, timeout=remaining, callbacks=callbacks,
                       catch=(KernelFailure,), gc_after_trial=False, show_progress_bar=False)

    with _quiet_optuna():
        if _count_evaluated(study) < search_trials and len(_trials(study)) < sample_limit:
            optimize(sample_limit - len(_trials(study)), [report, stop_at_search_budget])
        if budget.polish_share:
            _polish(study, space, optimize, report, budget.trials)
        if budget.refine_splits:
            _refine_splits(study, space, optimize, report)

    return _select(study, family, spec, shape, space, default_config, default_params, evaluator, budget, name)


def _params_key(params: dict) -> tuple:
    return tuple(sorted(params.items()))


def _polish(study, space: SearchSpace, optimize, report, trial_budget: int) -> None:
    """Coordinate search from the best config: every knob but the split count one step up and down, while
    that improves and the trial budget lasts. On short budgets TPE lands near the optimum; this walks the
    last steps."""
    for _ in range(MAX_POLISH_ROUNDS):
        left = trial_budget - _count_evaluated(study)
        complete = _trials(study, (TrialState.COMPLETE,))
        if left <= 0 or not complete:
            return
        best = min(complete, key=lambda t: t.value)
        tried = [t.params for t in _trials(study) if t.user_attrs.get("evaluated")]
        if not _evaluate_untried(study, polish_moves(space, best.params, tried), optimize, report, best, limit=left):
            return


def polish_moves(space: SearchSpace, best: dict, tried: Sequence[dict]) -> list:
    """The one-knob moves from best (every knob but the split count, one step each way), the values the search
    has tried (evaluated: timed, pruned as slow or failed) least often first: a budget that covers only some moves
    spends it where the study knows least. (In the knobs' listed order, the 4 polish trials of a 16-trial study
    went first to the tile's moves; in this order, retunes of GTA B8 S32K and B1 S64K Lq 4 on an H200 reached 2
    warps, their best, which the listed order's retunes had not.)"""
    moves = []
    for name, values in space.choices:
        if name == "num_splits" or best[name] not in values:
            continue
        index = values.index(best[name])
        moves += [(name, values[i]) for i in (index - 1, index + 1) if 0 <= i < len(values)]
    times_tried = {move: sum(1 for params in tried if params.get(move[0]) == move[1]) for move in moves}
    moves.sort(key=lambda move: times_tried[move])  # (stable: ties keep the knobs' order)
    return [dict(best, **{name: value}) for name, value in moves]


def _refine_splits(study, space: SearchSpace, optimize, report) -> None:
    """Split counts need no recompiling: try the neighbours of the best config's, until the best stays."""
    for _ in range(3):
        complete = _trials(study, (TrialState.COMPLETE,))
        if not complete:
            return
        best = min(complete, key=lambda t: t.value)
        neighbours = [dict(best.params, num_splits=splits) for splits in space.split_neighbours(best.params["num_splits"])]
        if not _evaluate_untried(study, neighbours, optimize, report, best):
            return


def _evaluate_untried(study, candidates: list, optimize, report, best, limit: Optional[int] = None) -> bool:
    """Enqueue the candidates no trial has tried yet (at most limit), evaluate them, and say whether one
    beat best (the caller's walk goes on only then)."""
    tried = {_params_key(t.params) for t in _trials(study)}
    queued = 0
    for params in candidates:
        if (limit is not None and queued >= limit) or _params_key(params) in tried:
            continue
        tried.add(_params_key(params))
        study.enqueue_trial(params)
        queued += 1
    if not queued:
        return False
    optimize(queued, [report])
    return min(t.value for t in _trials(study, (TrialState.COMPLETE,))) < best.value


def _select(study, family, spec, shape, space, default_config, default_params, evaluator, budget, name) -> Optional[BucketResult]:
    trials = _trials(study)
    complete = sorted(_trials(study, (TrialState.COMPLETE,)), key=lambda t: (t.value, t.number))
    default_trial = next((t for t in complete if t.params == default_params), None)
    if default_trial is None:
        return None
    chosen, chosen_us, rejected = default_config, default_trial.value, []
    seen = set()
    for candidate in complete:
        key = tuple(sorted(candidate.params.items()))
        if key in seen or candidate.value >= default_trial.value:
            continue
        seen.add(key)
        if len(rejected) >= budget.check_candidates:
            break
        config = space.config(candidate.params, default_config)
        try:
            reason = evaluator.output_mismatch(config, default_config)
        except Exception as error:  # a check that cannot run is a failed check
            reason = f"check failed: {_describe(error)}"
        if reason is None:
            chosen, chosen_us = config, candidate.value
            break
        rejected.append({"config": config.to_dict(), "us": round(candidate.value, 3), "reason": reason})
        study.set_user_attr(f"rejected_trial_{candidate.number}", reason)
    default_us = default_trial.value
    if chosen != default_config and budget.confirm_rounds:
        default_us, chosen_us = _confirm(evaluator, default_config, chosen, budget.confirm_rounds, default_us, chosen_us)
        if chosen_us >= default_us:
            study.set_user_attr("confirmation", f"{chosen} was not faster than the default when timed again")
            chosen, chosen_us = default_config, default_us
    return BucketResult(
        family=family.name,
        spec=spec,
        shape=shape,
        config=chosen,
        tuned_us=chosen_us,
        default_config=default_config,
        default_us=default_us,
        evaluated=sum(1 for t in trials if t.user_attrs.get("evaluated")),
        failed=sum(1 for t in trials if t.state == TrialState.FAIL),
        resource_pruned=sum(1 for t in trials if str(t.user_attrs.get("pruned", "")).startswith("resources")),
        slow_pruned=sum(1 for t in trials if str(t.user_attrs.get("pruned", "")).startswith("slow")),
        rejected=rejected,
        study_name=name,
    )


def _confirm(evaluator, default_config, chosen, rounds, default_us, chosen_us) -> tuple:
    """Time the default and the chosen config again, alternating, so that the recorded speed-up compares
    them under the same clocks and temperature (the default was timed first, on a cold GPU)."""
    default_times, chosen_times = [], []
    try:
        for _ in range(rounds):
            default_times.append(evaluator.time_us(default_config, quick=False))
            chosen_times.append(evaluator.time_us(chosen, quick=False))
    except Exception:  # keep the search's numbers; the configs ran there
        return default_us, chosen_us
    return sum(default_times) / rounds, sum(chosen_times) / rounds


class _quiet_optuna:
    """Optuna logs every trial (and a traceback per failed one); the progress line says what matters."""

    def __enter__(self):
        self.previous = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)

    def __exit__(self, *exc):
        optuna.logging.set_verbosity(self.previous)


def journal_storage(path) -> optuna.storages.BaseStorage:
    """A JournalStorage on one append-only file: safe to kill at any point, resumed by opening it again."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(path)))

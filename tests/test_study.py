"""One Optuna study (glacompiler/tuning/study.py) on a synthetic cost surface: it finds the optimum, prunes what
the resource model rejects, records failures, resumes from its journal, drops configs whose output mismatches."""
import dataclasses

import pytest

optuna = pytest.importorskip("optuna")

from glacompiler.kernels.portable.config import heuristic_config  # noqa: E402
from glacompiler.tuning.study import TuningBudget, journal_storage, tune_bucket  # noqa: E402
from tuning_doubles import GQA, SHAPE, SMALL_GPU, SyntheticKernel, true_optimum  # noqa: E402


def test_tuner_finds_the_optimum_and_prunes_and_records_failures():
    kernel = SyntheticKernel()
    result = tune_bucket(GQA, SHAPE, kernel, SMALL_GPU, budget=TuningBudget(trials=60), seed=0)
    assert result.config == true_optimum()
    assert result.tuned_us == pytest.approx(SyntheticKernel.cost(result.config))
    # The heuristic default was timed first, and is the baseline of the speed-up.
    default = heuristic_config(GQA, SHAPE.batch, SHAPE.capacity, SHAPE.query_len, SMALL_GPU.multiprocessors)
    assert kernel.calls[0][0] == default
    assert result.default_us == pytest.approx(SyntheticKernel.cost(default))
    assert result.speedup > 1
    # Within budget: the trial budget plus the split refinement (a few extra, no recompiling).
    assert result.evaluated <= 60 + 12
    # Configs the model rejects never reached the evaluator (SyntheticKernel asserts it) but were sampled.
    assert result.resource_pruned > 0
    # Failures are failed trials with the reason recorded, and the study went on past them.
    assert result.failed > 0
    assert result.slow_pruned > 0
    # Trials pruned as slow got the short first look only.
    assert sum(quick for _, quick in kernel.calls) > sum(not quick for _, quick in kernel.calls)


def test_failed_and_pruned_trials_are_recorded_in_storage(tmp_path):
    storage = journal_storage(tmp_path / "journal.log")
    result = tune_bucket(GQA, SHAPE, SyntheticKernel(), SMALL_GPU, budget=TuningBudget(trials=40), storage=storage)
    study = optuna.load_study(study_name=result.study_name, storage=storage)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert failed and all("OutOfResources" in t.user_attrs["error"] for t in failed)
    assert all(t.params["num_stages"] == 5 and t.params["num_warps"] == 8 for t in failed)
    pruned = study.get_trials(states=(optuna.trial.TrialState.PRUNED,))
    assert any(t.user_attrs.get("pruned", "").startswith("resources: shared") for t in pruned)
    assert any(t.user_attrs.get("pruned", "").startswith("slow") for t in pruned)
    # Every timed trial keeps the model's estimate, to compare with what the compiler used.
    timed = [t for t in study.get_trials() if t.user_attrs.get("evaluated")]
    assert timed and all(t.user_attrs["model"]["shared_bytes"] <= SMALL_GPU.shared_bytes_per_block for t in timed)


def test_interrupted_study_resumes_from_the_journal(tmp_path):
    path = tmp_path / "journal.log"
    first = SyntheticKernel(stop_after=30)  # about half of the budget's timings, then the run dies
    with pytest.raises(KeyboardInterrupt):
        tune_bucket(GQA, SHAPE, first, SMALL_GPU, budget=TuningBudget(trials=30), storage=journal_storage(path))
    timed_before = {c for c, _ in first.calls}

    second = SyntheticKernel()
    result = tune_bucket(GQA, SHAPE, second, SMALL_GPU, budget=TuningBudget(trials=30),
                         storage=journal_storage(path))  # a new storage and study object on the same file
    default = heuristic_config(GQA, SHAPE.batch, SHAPE.capacity, SHAPE.query_len, SMALL_GPU.multiprocessors)
    # Not searched again (the default is timed once more only to confirm the winner's speed-up).
    assert default in timed_before and all(c != default for c, quick in second.calls if quick)
    assert 0 < len({c for c, _ in second.calls}) < 30  # continued with what the budget had left
    assert result.evaluated >= 30
    assert result.default_us == pytest.approx(SyntheticKernel.cost(default))


def test_mismatching_output_is_dropped_with_the_reason():
    optimum = true_optimum()
    kernel = SyntheticKernel(mismatching=[optimum])
    result = tune_bucket(GQA, SHAPE, kernel, SMALL_GPU, budget=TuningBudget(trials=60), seed=0)
    assert optimum in kernel.checked
    assert result.config != optimum
    assert result.rejected and result.rejected[0]["config"] == optimum.to_dict()
    assert "output error" in result.rejected[0]["reason"]
    assert result.tuned_us >= SyntheticKernel.cost(optimum)


def test_winner_is_timed_again_against_the_default():
    optimum = true_optimum()

    class FastOnlyOnce(SyntheticKernel):
        """The optimum looks fast in the search, but not when timed again next to the default."""

        def time_us(self, config, quick):
            value = super().time_us(config, quick)
            if config == optimum and sum(c == optimum and not q for c, q in self.calls) > 1:
                return 1000.0
            return value

    kernel = FastOnlyOnce()
    result = tune_bucket(GQA, SHAPE, kernel, SMALL_GPU, budget=TuningBudget(trials=60), seed=0)
    default = heuristic_config(GQA, SHAPE.batch, SHAPE.capacity, SHAPE.query_len, SMALL_GPU.multiprocessors)
    assert result.config == default and result.tuned_us == result.default_us
    assert kernel.calls[-4:] == [(default, False), (optimum, False), (default, False), (optimum, False)]


def test_no_result_when_the_default_fails():
    default = heuristic_config(GQA, SHAPE.batch, SHAPE.capacity, SHAPE.query_len, SMALL_GPU.multiprocessors)

    class DefaultBreaks(SyntheticKernel):
        def time_us(self, config, quick):
            if config == default:
                raise RuntimeError("CompilationError: synthetic")
            return super().time_us(config, quick)

    assert tune_bucket(GQA, SHAPE, DefaultBreaks(), SMALL_GPU, budget=TuningBudget(trials=5)) is None


def test_wall_clock_budget_stops_the_study():
    kernel = SyntheticKernel()
    result = tune_bucket(GQA, SHAPE, kernel, SMALL_GPU, budget=TuningBudget(trials=500, time_s=0.5))
    assert result is not None and result.evaluated < 500


def test_near_ties_are_ordered_by_their_back_to_back_time():
    """Configs the lone timing puts within tie_ratio of the fastest are ranked by back_to_back_us: here every split
    count times the same alone, and back to back the evaluator prefers more splits."""
    class FlatInSplits(SyntheticKernel):
        def __init__(self):
            super().__init__()
            self.back_to_back = []

        @staticmethod
        def cost(config):
            return SyntheticKernel.cost(dataclasses.replace(config, num_splits=6))

        def back_to_back_us(self, config):
            self.back_to_back.append(config)
            return 100.0 - config.num_splits

    kernel = FlatInSplits()
    result = tune_bucket(GQA, SHAPE, kernel, SMALL_GPU, budget=TuningBudget(trials=60), seed=0)
    tied_splits = {config.num_splits for config in kernel.back_to_back}
    assert len(tied_splits) >= 2 and result.config.num_splits == max(tied_splits)
    untied = FlatInSplits()
    tune_bucket(GQA, SHAPE, untied, SMALL_GPU, budget=TuningBudget(trials=60, tie_ratio=-1.0), seed=0)
    assert untied.back_to_back == []  # no config within a negative ratio of the fastest: the lone timings decide

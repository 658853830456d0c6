"""One Optuna study (glacompiler/tuning/study.py) on a synthetic cost surface: it finds the optimum, prunes what
the resource model rejects, records failures, resumes from its journal, drops configs whose output mismatches."""
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


def test_a_journal_is_resumed_only_under_the_same_timing_method(tmp_path):
    """Trials timed one way (a call alone, say) must not rank against trials timed another (calls back to back)."""
    class TimedBackToBack(SyntheticKernel):
        timing = "back-to-back"

    path = tmp_path / "journal.log"
    first = tune_bucket(GQA, SHAPE, SyntheticKernel(), SMALL_GPU, budget=TuningBudget(trials=12),
                        storage=journal_storage(path))
    again = SyntheticKernel()
    tune_bucket(GQA, SHAPE, again, SMALL_GPU, budget=TuningBudget(trials=12), storage=journal_storage(path))
    other_method = TimedBackToBack()
    result = tune_bucket(GQA, SHAPE, other_method, SMALL_GPU, budget=TuningBudget(trials=12),
                         storage=journal_storage(path))
    assert result.study_name != first.study_name and result.study_name.endswith("|timing-back-to-back")
    # The same method resumed the finished study (its budget spent: nothing but the confirmation re-timed);
    # the other started afresh, from the heuristic default.
    assert len(again.calls) < len(other_method.calls)
    default = heuristic_config(GQA, SHAPE.batch, SHAPE.capacity, SHAPE.query_len, SMALL_GPU.multiprocessors)
    assert other_method.calls[0][0] == default and result.evaluated >= 12


def test_polish_moves_try_the_least_tried_values_first():
    from glacompiler.kernels.common.search_space import SearchSpace
    from glacompiler.tuning.study import polish_moves

    space = SearchSpace((("block_n", (32, 64, 128)), ("num_splits", (1, 2, 4)), ("num_warps", (2, 4, 8)),
                         ("preload_q", (False, True))))
    best = {"block_n": 64, "num_splits": 2, "num_warps": 4, "preload_q": True}
    # The search tried the tiles often and 2 warps never; 8 warps once.
    tried = [dict(best, block_n=n, num_warps=w) for n in (32, 128) for w in (4, 4, 8 if n == 32 else 4)]
    moves = polish_moves(space, best, tried)
    changed = [next((name, value) for name, value in move.items() if best[name] != value) for move in moves]
    assert changed[0] == ("num_warps", 2)
    assert changed[1] == ("preload_q", False)
    assert changed[2] == ("num_warps", 8)
    # Every one-knob move but the split count's, each once, and nothing else changed.
    assert sorted(changed, key=repr) == sorted([("block_n", 32), ("block_n", 128), ("num_warps", 2), ("num_warps", 8),
                                                ("preload_q", False)], key=repr)
    assert all(sum(move[name] != best[name] for name in best) == 1 for move in moves)
    # Ties keep the knobs' order (block_n's two moves, tried 3 times each, last); a best value outside the space
    # (a seeded config) gives its knob no move.
    assert changed[3:] == [("block_n", 32), ("block_n", 128)]
    outside = polish_moves(space, dict(best, num_warps=16), tried)
    assert all(move["num_warps"] == 16 for move in outside) and len(outside) == 3

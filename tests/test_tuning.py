"""Tuning suites: the space, the pruner, the two stages and the budget against hand-computed cases, and a tiny
tuning suite run twice from its config alone into two stores: the same trials pruned, the same values chosen,
and no test metric anywhere."""
from __future__ import annotations

import io
import math
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import yaml

from mdl_bench.benchmark.cli import main
from mdl_bench.kernel.errors import UserError
from mdl_bench.benchmark.suite import load_suite, run_suite, tuner_points
from mdl_bench.benchmark.suite.tuning import (RowSearch, Tuner, TrialSpec, converged, epoch_values, round_value,
                                              search_space)


def _h(*values):
    """A valid_history: monitor ``values[e]`` at the end of epoch ``e + 1``."""
    return [{"epoch": e + 1, "batch": 10, "epoch_end": True, "monitor": v} for e, v in enumerate(values)]


def _result(*values, pruned=False):
    return {"valid_history": _h(*values), "epochs_run": len(values), "best_epoch": 1 + int(np.argmax(values)),
            **({"stopped_by": "pruned at epoch 1"} if pruned else {})}


# ---------------------------------------------------------------------------------------------- the space
def test_joint_axes_set_several_keys_together():
    space = {"lr": [1, 2], "reg": [{"r": 0}, {"r": 1, "scope": "batch"}]}
    assert tuner_points(space) == [{"lr": 1, "r": 0}, {"lr": 1, "r": 1, "scope": "batch"},
                                   {"lr": 2, "r": 0}, {"lr": 2, "r": 1, "scope": "batch"}]
    with pytest.raises(UserError, match="mixes mappings and values"):
        tuner_points({"reg": [{"r": 0}, 3]})


def test_search_space_ranges_choices_fixed_keys_and_own_keys():
    shared = {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "batch_norm": [True, False],
              "loss_weighting": ["domain", "batch"], "embedding_dim": 8,
              "reg": [{"embedding_regularizer": 0}, {"embedding_regularizer": 0.01, "embedding_regularizer_scope": "x"}]}
    axes, constants = search_space(shared, {"num_experts": [None, 8]}, fixed={"loss_weighting"}, where="w")
    assert [a.name for a in axes] == ["learning_rate", "batch_norm", "reg", "num_experts"]
    assert constants == {"embedding_dim": 8}
    assert axes[0].log and (axes[0].low, axes[0].high) == (1e-4, 1e-2) and not axes[0].own
    assert axes[2].config(1) == {"embedding_regularizer": 0.01, "embedding_regularizer_scope": "x"}
    assert axes[3].own and axes[3].config(0) == {"num_experts": None}
    with pytest.raises(UserError, match="must list its values"):
        search_space({}, {"cov_alpha": {"low": 1e-6, "high": 1e-2}}, set(), "w")
    with pytest.raises(UserError, match="at most 3 of its own keys"):
        search_space({}, {"a": [1, 2], "b": [1, 2], "c": [1, 2], "d": [1, 2]}, set(), "w")
    with pytest.raises(UserError, match="a < b"):
        search_space({"learning_rate": {"low": 1e-2, "high": 1e-4}}, {}, set(), "w")
    with pytest.raises(UserError, match="a > 0 on a log scale"):
        search_space({"learning_rate": {"low": 0, "high": 1e-2, "log": True}}, {}, set(), "w")
    assert round_value(0.0123456) == 0.012 and round_value(3.456e-5) == 3.5e-5


def test_tuner_block_is_checked():
    with pytest.raises(UserError, match="unknown tuner key 'budjet'"):
        Tuner.parse({"budjet": 3}, "suite x")
    for bad in ({"budget": 0}, {"reduction": 1}, {"first_rung": 0}, {"seed": "a"}, {"converged_epochs": 0},
                {"startup_trials": -1}):
        with pytest.raises(UserError):
            Tuner.parse(bad, "suite x")
    assert Tuner.parse({"budget": 12, "seed": 3}, "suite x") == Tuner(budget=12, seed=3)


def test_a_dataset_sets_its_own_tuner_settings_and_the_command_line_wins_over_both():
    tuner = Tuner.parse({"budget": 64, "seed": 3, "datasets": {"slow": {"budget": 32, "first_rung": 3}}}, "suite x")
    assert tuner.for_dataset("slow") == Tuner(budget=32, seed=3, first_rung=3)
    assert tuner.for_dataset("other") == tuner.for_dataset(None) == Tuner(budget=64, seed=3)
    assert tuner.datasets() == ["slow"]
    cli = tuner.with_settings({"budget": 16}, "suite x with --tuner")
    assert cli.for_dataset("slow") == Tuner(budget=16, seed=3, first_rung=3)
    assert cli.for_dataset("other") == Tuner(budget=16, seed=3)
    with pytest.raises(UserError, match=r"suite x, tuner, datasets, slow, tuner: unknown tuner key 'budjet'"):
        Tuner.parse({"datasets": {"slow": {"budjet": 3}}}, "suite x")
    with pytest.raises(UserError, match="must be an integer >= 1"):
        Tuner.parse({"datasets": {"slow": {"budget": 0}}}, "suite x")
    with pytest.raises(UserError, match="must map dataset ids to tuner settings"):
        Tuner.parse({"datasets": ["slow"]}, "suite x")


# ---------------------------------------------------------------------------------------------- the search
def _search(own=None, budget=40, full_cap=10, **tuner):
    shared = {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "batch_norm": [True, False]}
    axes, constants = search_space(shared, own or {}, set(), "w")
    return RowSearch("R@d", axes, constants, Tuner(budget=budget, seed=1, **tuner), "max", full_cap)


def _spec(search, index, lr, bn=0, stage="search", epochs=None, **own):
    return search.spec(index, stage, {"learning_rate": lr, "batch_norm": bn, **own}, epochs)


def test_epoch_values_are_the_best_so_far_at_each_epoch_end():
    history = _h(0.5, 0.7, 0.6) + [{"epoch": 4, "batch": 3, "epoch_end": False, "monitor": 0.9}]
    assert epoch_values(history, "max") == [(1, 0.5), (2, 0.7), (3, 0.7)]
    assert epoch_values(_h(0.5, 0.4, 0.6), "min") == [(1, 0.5), (2, 0.4), (3, 0.4)]


def test_converged_means_not_pruned_and_ended_by_early_stopping_or_the_full_cap():
    search = _search()
    full, cut = _spec(search, 0, 1e-3), _spec(search, 1, 1e-3, epochs=3)
    assert converged(full, _result(0.5, 0.6, 0.55), 10)
    assert not converged(full, _result(0.5, pruned=True), 10)
    assert converged(full, _result(*[0.5] * 10), 10)            # ran to the row's own cap
    assert not converged(cut, _result(0.5, 0.6, 0.7), 10)       # ran to the cap the budget cut
    assert converged(cut, _result(0.5, 0.6), 10)                # early-stopped before it
    assert not converged(full, None, 10)


def test_the_pruner_keeps_the_best_third_at_each_rung_as_optuna_asha_does():
    """Rungs at epochs 1, 3, 9 (first_rung 1, reduction 3). At epoch 1 three earlier trials reached the rung
    with 0.60, 0.65, 0.55: with the new trial n = 4, the top floor(4 / 3) = 1 goes on."""
    search = _search(first_rung=1, reduction=3)
    done = [(_spec(search, 0, 1e-3), _result(0.60, 0.70, 0.72)), (_spec(search, 1, 2e-3), _result(0.65, pruned=True)),
            (_spec(search, 2, 3e-3), _result(0.55, 0.58))]
    assert search.pruner(done, _spec(search, 3, 4e-3))({"epoch": 1, "epoch_end": True, "monitor": 0.66}) is None
    reason = search.pruner(done, _spec(search, 3, 4e-3))({"epoch": 1, "epoch_end": True, "monitor": 0.62})
    assert reason == "pruned at epoch 1: not in the best 1/3 of its row's trials at this rung"
    p = search.pruner(done, _spec(search, 3, 4e-3))
    assert p({"epoch": 1, "epoch_end": True, "monitor": 0.70}) is None
    assert p({"epoch": 2, "epoch_end": False, "monitor": 0.71}) is None   # not an epoch end
    assert p({"epoch": 2, "epoch_end": True, "monitor": 0.69}) is None    # not a rung
    # epoch 3: only trial 0 reached it (0.72): n = 2 -> the top 1 goes on; 0.71 so far is not it
    assert p({"epoch": 3, "epoch_end": True, "monitor": 0.71}).startswith("pruned at epoch 3")
    assert search.pruner([], _spec(search, 0, 1e-3))({"epoch": 1, "epoch_end": True, "monitor": 0.1}) is None


def test_stage_one_spends_the_budget_less_the_reserve_then_stage_two_sweeps_at_the_chosen_recipe():
    search = _search(own={"x": ["a", "b", "c"]}, budget=20, full_cap=10, first_rung=2, converged_epochs=4)
    # reserve: (2 other own values + 2 decades - 1) x 4 epochs = 12; 8 epochs for stage 1
    assert search.sweep_size() == 3 and search.reserve([]) == 12
    first = search.next([])
    assert first.stage == "search" and first.epochs == 8 and first.point["epochs"] == 8
    assert search.next([]) == first  # seeded: the same draw every time
    done = [(first, _result(0.60, 0.62, 0.63))]                 # converged, 3 epochs: reserve 3 x 3 = 9
    second = search.next(done)
    assert second.stage == "search" and second.epochs == 20 - 9 - 3
    done.append((second, _result(0.50, 0.51, pruned=True)))
    # 20 - 9 - 5 = 6 >= first_rung: one more search trial with its cap cut to 6
    third = search.next(done)
    assert third.stage == "search" and third.epochs == 6
    done.append((third, _result(0.55, 0.56, 0.57, 0.58, 0.59, 0.60)))   # ran to its cut cap: not converged
    chosen = dict(first.values)
    sweep = []
    while (spec := search.next(done)) is not None:
        assert spec.stage == "sweep" and spec.epochs is None
        sweep.append(dict(spec.values))
        lr = dict(spec.values)["learning_rate"]
        done.append((spec, _result(0.61, 0.62)))
    others = [c for c in range(3) if c != chosen["x"]]
    assert sweep[-2:] == [{**chosen, "x": c} for c in others]   # every other own value at the chosen recipe
    assert all(values["x"] == chosen["x"] for values in sweep[:-2])  # first: the learning-rate decades
    decades = {math.floor(math.log10(dict(s.values)["learning_rate"]) + 1e-9) for s, r in done
               if converged(s, r, 10)}
    assert decades == {-4, -3}                                   # a converged trial in each decade of the range
    for values in sweep:  # the recipe is the chosen one but for the own key or the learning rate
        assert {k: v for k, v in values.items() if k not in ("x", "learning_rate")} == \
            {k: v for k, v in chosen.items() if k not in ("x", "learning_rate")}
    assert search.chosen(done) is not None


def test_own_values_are_swept_at_the_recipe_the_learning_rate_decades_left():
    """When a decade trial beats the stage-1 choice, the own values are trained at the decade trial's recipe, so
    the final choice's recipe is the one every own value was trained at."""
    search = _search(own={"x": ["a", "b"]}, budget=6, full_cap=10, first_rung=2, converged_epochs=2)
    first = _spec(search, 0, 3e-4, x=0)
    done = [(first, _result(0.60, 0.61))]
    decade = search.next(done)
    assert decade.stage == "sweep" and dict(decade.values) == {**dict(first.values), "learning_rate": 3e-3}
    done.append((decade, _result(0.70, 0.71)))                  # the better recipe
    own = search.next(done)
    assert dict(own.values) == {**dict(decade.values), "x": 1}  # at the decade trial's recipe
    done.append((own, _result(0.65, 0.66)))
    assert search.next(done) is None and search.chosen(done) == 1


def test_stage_two_first_trains_the_chosen_point_when_no_search_trial_converged():
    search = _search(budget=8, full_cap=10, first_rung=2, converged_epochs=2)
    spec = _spec(search, 0, 2e-3, epochs=6)
    done = [(spec, _result(0.6, 0.61, 0.62, 0.63, 0.64, 0.65))]  # its cut cap: not converged
    nxt = search.next(done)
    assert nxt.stage == "sweep" and dict(nxt.values) == dict(spec.values) and nxt.epochs is None



def test_stage_two_trains_a_budget_cut_trial_that_leads_every_converged_one():
    """A trial cut by the budget while still improving, ahead of the converged one, is the point stage 2 trains
    to the end and moves across the learning-rate decades; a pruned trial's value does not count."""
    search = _search(budget=12, full_cap=10, first_rung=2, converged_epochs=2)
    converged_one = _spec(search, 0, 2e-4)
    cut = _spec(search, 1, 3e-3, epochs=5)
    pruned = _spec(search, 2, 5e-3)
    done = [(converged_one, _result(0.60, 0.61, 0.60)), (cut, _result(0.62, 0.66, 0.68, 0.69, 0.70)),
            (pruned, _result(0.75, pruned=True))]
    nxt = search.next(done)
    assert nxt.stage == "sweep" and dict(nxt.values) == dict(cut.values) and nxt.epochs is None
    done.append((nxt, _result(0.70, 0.72, 0.71)))
    # the 1e-4 decade already has a converged trial (the first): nothing else to train
    assert search.next(done) is None and search.chosen(done) == 3
    # when the converged trial leads, stage 2 starts from it, as before
    done = [(converged_one, _result(0.60, 0.71, 0.70)), (cut, _result(0.62, 0.66, 0.68, 0.69, 0.70))]
    assert dict(search.next(done).values) == {**dict(converged_one.values), "learning_rate": 2e-3}

def test_search_epochs_caps_every_stage_one_trial_and_stage_two_trains_the_winner_on():
    """With ``search_epochs`` a slow first trial cannot take the row's budget: each stage-1 trial stops at the cap
    (not converged), and stage 2 trains the best of them to the end before anything else."""
    plain = _search(budget=24, full_cap=10, first_rung=2, converged_epochs=2)
    capped = _search(budget=24, full_cap=10, first_rung=2, converged_epochs=2, search_epochs=4)
    assert capped.sweep_size() == plain.sweep_size() + 1
    assert plain.next([]).epochs is None and capped.next([]).epochs == 4
    done, slow = [], [0.50, 0.55, 0.60, 0.62]          # still improving at the cap
    while (spec := capped.next(done)) is not None and spec.stage == "search":
        assert spec.epochs <= 4
        done.append((spec, _result(*slow) if not done else _result(0.4, 0.45, pruned=True)))
    # budget 24, reserve (0 own values + 1 decade + the winner) x 2 = 4: stage 1 got 20 epochs, not one trial
    assert sum(1 for s, _ in done if s.stage == "search") >= 5
    assert spec.stage == "sweep" and dict(spec.values) == dict(done[0][0].values) and spec.epochs is None
    assert not converged(done[0][0], done[0][1], 10)
    with pytest.raises(UserError):
        Tuner.parse({"search_epochs": -1}, "suite x")


def test_selection_takes_the_best_converged_trial_and_the_earlier_on_a_tie():
    search = _search()
    done = [(_spec(search, 0, 1e-3), _result(0.7, 0.8)), (_spec(search, 1, 2e-3), _result(0.9, pruned=True)),
            (_spec(search, 2, 3e-3), None), (_spec(search, 3, 4e-3), _result(0.6, 0.8)),
            (_spec(search, 4, 5e-3, epochs=2), _result(0.85, 0.86))]   # cut cap, not converged
    assert search.chosen(done) == 0
    search.mode = "min"
    assert search.chosen(done) == 3   # 0.6 beats 0.7


# ---------------------------------------------------------------------------------------------- end to end
TUNE = {
    "name": "tinytune",
    "description": "two rows on tiny data",
    "seeds": [2024],
    "overrides": {"epochs": 4, "batch_size": 1024, "early_stop_patience": 1},
    "tuner": {"budget": 14, "seed": 3, "startup_trials": 2, "first_rung": 1, "reduction": 2, "converged_epochs": 2},
    "tuner_space": {"learning_rate": {"low": 1.0e-3, "high": 1.0e-1, "log": True}, "batch_norm": [True, False]},
    "expids": [{"expid": "SharedBottom_test", "tuner_space": {"net_dropout": [0.0, 0.1]}}, "MMoE_test"],
}


def _run(folder: Path, store: Path):
    path = folder / "tune.yaml"
    path.write_text(yaml.safe_dump(TUNE, sort_keys=False))
    suite = load_suite(str(path))
    outcome = run_suite(suite, store=str(store), out=lambda line: None, progress_stream=io.StringIO())
    assert not outcome.failed, outcome.failed
    return suite


@pytest.fixture(scope="module")
def tuned(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tune")
    a, b = folder / "a.sqlite", folder / "b.sqlite"
    suite = _run(folder, a)
    _run(folder, b)
    return folder, suite, a, b


def _trials(store: Path) -> list:
    with closing(sqlite3.connect(str(store))) as conn:
        return conn.execute("SELECT expid, config_hash, best_epoch, epochs_run, json_extract(result_json, "
                            "'$.stopped_by') FROM runs ORDER BY run_id").fetchall()


def test_a_tuning_suite_reruns_from_its_config_to_the_same_choice(tuned):
    from mdl_bench.benchmark.leaderboard.tuning import build_tuning

    folder, suite, a, b = tuned
    assert len(_trials(a)) > 4 and _trials(a) == _trials(b)  # same trials, epochs and pruning decisions
    assert any(t[4] for t in _trials(a)), "the rung pruned nothing: the test does not exercise the pruner"
    rows_a, rows_b = build_tuning(suite, str(a)), build_tuning(suite, str(b))
    assert [r.chosen for r in rows_a] == [r.chosen for r in rows_b]
    assert all(r.chosen is not None and r.finished for r in rows_a)
    for row in rows_a:
        chosen = row.chosen_trial
        assert chosen.converged and not chosen.result.get("stopped_by")
        best = max(h["monitor"] for h in chosen.result["valid_history"])
        assert best == max(max(h["monitor"] for h in t.result["valid_history"]) for t in row.trials if t.converged)
        stages = [t.spec.stage for t in row.trials]
        assert stages == sorted(stages)  # every search trial before every sweep trial
        assert row.epochs_used <= suite.tuner.budget + 2 * 4  # stage 2 may pass the budget by its own trials
    # the acceptance: every own value converged at the chosen recipe, a converged trial in every lr decade
    from mdl_bench.benchmark.leaderboard.tuning import decade_results, own_value_results

    for row in rows_a:
        assert all(trial is not None for _, _, trial in own_value_results(row))
        assert [d for d, _ in decade_results(row)] == [-3, -2] and all(t is not None for _, t in decade_results(row))
    assert len(own_value_results(rows_a[0])) == 2 and own_value_results(rows_a[1]) == []
    # stage 2 of Shared Bottom: its own key's other value at the chosen recipe, converged
    sb = rows_a[0]
    recipe = {k: v for k, v in sb.chosen_trial.variant.tuned.items() if k not in ("net_dropout", "epochs")}
    for dropout in (0.0, 0.1):
        assert any(t.converged and t.variant.tuned["net_dropout"] == dropout and
                   {k: v for k, v in t.variant.tuned.items() if k not in ("net_dropout", "epochs")} == recipe
                   for t in sb.trials)


def test_trials_never_read_the_test_split(tuned):
    folder, suite, a, b = tuned
    with closing(sqlite3.connect(str(a))) as conn:
        splits = {s for (s,) in conn.execute("SELECT DISTINCT split FROM metrics")}
        configs = [c for (c,) in conn.execute("SELECT json_extract(config_json, '$.evaluate_test') FROM runs")]
    assert splits == {"valid"} and configs == [0] * len(configs) and configs


def test_the_report_gives_the_chosen_values_as_a_config_block(tuned, capsys):
    folder, suite, a, b = tuned
    assert main(["leaderboard", "--suite", str(folder / "tune.yaml"), "--store", str(a)]) == 0
    text = capsys.readouterr().out
    assert "# Tuning suite tinytune" in text and "**chosen**" in text and "pruned at epoch 1" in text
    assert "## Converged at the chosen recipe" in text and "net_dropout=0.1: 1." in text
    block = yaml.safe_load(text.split("```yaml\n")[1].split("```")[0])
    assert set(block) == {"SharedBottom_test_tiny_synth", "MMoE_test_tiny_synth"}
    from mdl_bench.benchmark.leaderboard.tuning import build_tuning

    for row in build_tuning(suite, str(a)):
        got = block[f"{row.expid}_tiny_synth"]
        assert got["model"] == row.expid.split("_")[0] and got["dataset_id"] == "tiny_synth" and got["epochs"] == 4
        for key in ("learning_rate", "batch_norm"):
            assert got[key] == row.chosen_trial.variant.params[key]
    assert isinstance(block["MMoE_test_tiny_synth"]["learning_rate"], float)
    assert main(["leaderboard", "--suite", str(folder / "tune.yaml"), "--store", str(a), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(_trials(a)) + 1 and sum(line.split(",")[6] == "1" for line in lines[1:]) == 2


def test_jobs_run_rows_side_by_side_and_search_the_same(tuned, tmp_path):
    """Under --jobs each row's next trial is drawn only after its earlier ones are stored, so the draws, the
    pruning decisions and the stored trials are those of the one-at-a-time run."""
    folder, suite, a, b = tuned
    outcome = run_suite(suite, store=str(tmp_path / "c.sqlite"), jobs=2, out=lambda line: None,
                        progress_stream=io.StringIO())
    assert not outcome.failed and _trials(tmp_path / "c.sqlite") != []
    assert sorted(_trials(tmp_path / "c.sqlite")) == sorted(_trials(a))


def test_a_search_stopped_midway_resumes_to_the_same_trials(tuned, tmp_path):
    """A killed search loses only the trials not stored yet: run again into the same store, it plans each row's
    next trial from the stored ones and ends with the trials of the uninterrupted run."""
    import shutil

    folder, suite, a, b = tuned
    partial = tmp_path / "partial.sqlite"
    shutil.copy(a, partial)
    with closing(sqlite3.connect(str(partial))) as conn:
        last = conn.execute("SELECT max(run_id) FROM runs").fetchone()[0]
        conn.execute("DELETE FROM metrics WHERE run_id > ?", (last - 4,))
        conn.execute("DELETE FROM runs WHERE run_id > ?", (last - 4,))
        conn.commit()
    assert len(_trials(partial)) == len(_trials(a)) - 4
    outcome = run_suite(suite, store=str(partial), out=lambda line: None, progress_stream=io.StringIO())
    assert not outcome.failed and len(outcome.stored_now) == 4
    assert sorted(_trials(partial)) == sorted(_trials(a))


def test_tuner_settings_from_the_command_line(tuned, tmp_path, capsys):
    """`--tuner budget=N` changes the search for every row alike (the leaderboard needs the same to find it);
    a wrong key or a suite without `tuner:` is one line naming the problem. A dataset's own `budget` in the
    suite file searches as `--tuner budget=N` does."""
    from mdl_bench.benchmark.leaderboard.tuning import build_tuning

    folder, suite, a, b = tuned
    path = str(folder / "tune.yaml")
    store = str(tmp_path / "t.sqlite")
    assert main(["run", "--suite", path, "--store", store, "--tuner", "budget=7", "--no-leaderboard"]) == 0
    assert 0 < len(_trials(store)) < len(_trials(a))  # half the suite's budget of 14: fewer trials
    capsys.readouterr()
    assert main(["leaderboard", "--suite", path, "--store", store, "--tuner", "budget=7"]) == 0
    assert "7 training epochs per row" in capsys.readouterr().out
    assert main(["run", "--suite", path, "--store", store, "--tuner", "budget=3", "--dry-run"]) == 2
    assert "the tuner's budget of 3 epochs leaves no room for a search trial" in capsys.readouterr().err
    assert main(["run", "--suite", path, "--store", store, "--tuner", "budjet=3", "--dry-run"]) == 2
    assert "unknown tuner key 'budjet'" in capsys.readouterr().err
    assert main(["run", "--suite", "quick", "--tuner", "budget=3", "--dry-run"]) == 2
    assert "not a tuning suite; drop --tuner" in capsys.readouterr().err
    # the same budget set by the dataset in the suite file: the same search, so every trial is found stored
    dataset_id = build_tuning(suite, str(a))[0].dataset_id
    own = folder / "own_budget.yaml"
    own_tuner = {**TUNE["tuner"], "datasets": {dataset_id: {"budget": 7}}}
    own.write_text(yaml.safe_dump({**TUNE, "tuner": own_tuner}, sort_keys=False))  # the axes in the suite's order
    before = _trials(store)
    assert main(["run", "--suite", str(own), "--store", store, "--no-leaderboard"]) == 0
    assert _trials(store) == before
    capsys.readouterr()
    assert main(["leaderboard", "--suite", str(own), "--store", store]) == 0
    assert "7 training epochs per row" in capsys.readouterr().out
    own_tuner = {**TUNE["tuner"], "datasets": {"nosuch": {"budget": 7}}}
    own.write_text(yaml.safe_dump({**TUNE, "tuner": own_tuner}, sort_keys=False))
    assert main(["run", "--suite", str(own), "--store", store, "--dry-run"]) == 2
    assert "tuner `datasets` names an unknown dataset 'nosuch'" in capsys.readouterr().err


def test_a_tuning_suite_takes_one_seed():
    from mdl_bench.benchmark.suite import Suite

    with pytest.raises(UserError, match="one seed"):
        Suite({**TUNE, "seeds": [1, 2]})


def test_rerun_of_a_pruned_trial_stops_where_it_stopped(tuned):
    from mdl_bench.benchmark.suite import rerun

    folder, suite, a, b = tuned
    with closing(sqlite3.connect(str(a))) as conn:
        pruned = conn.execute("SELECT run_id FROM runs WHERE json_extract(result_json, '$.stopped_by') IS NOT NULL "
                              "ORDER BY run_id LIMIT 1").fetchone()[0]
    lines = []
    assert rerun(pruned, store=str(a), out=lines.append, progress_stream=io.StringIO()), "\n".join(lines)
    assert any("stops at the same validation" in line for line in lines)


def test_expected_best_of_n_trials_equals_brute_force_enumeration():
    """Dodge et al.'s closed form against every ordered draw of n trials (with replacement) enumerated."""
    import itertools

    from mdl_bench.benchmark.leaderboard.budget import expected_best

    scores = [0.71, 0.74, 0.70, 0.74, 0.73]
    for n in (1, 2, 3):
        draws = [max(c) for c in itertools.product(scores, repeat=n)]
        mean, std = expected_best(scores, n)
        assert mean == pytest.approx(np.mean(draws), abs=1e-12) and std == pytest.approx(np.std(draws), abs=1e-12)
        low = [min(c) for c in itertools.product(scores, repeat=n)]
        assert expected_best(scores, n, "min")[0] == pytest.approx(np.mean(low), abs=1e-12)
    assert expected_best(scores, 1)[0] == pytest.approx(np.mean(scores))
    assert expected_best(scores, 500)[0] == pytest.approx(max(scores), abs=1e-9)


def test_budget_curves_and_where_the_ranking_settles():
    from types import SimpleNamespace as NS

    from mdl_bench.benchmark.leaderboard.budget import budget_curves, render_budget_md

    def row(label, scores, pruned=()):
        trials = [NS(result={"valid_history": [{"monitor": s}], **({"stopped_by": "pruned"} if i in pruned else {})})
                  for i, s in enumerate(scores)]
        return NS(label=label, mode="max", trials=trials + [NS(result=None)])  # a trial not run yet: ignored

    # A is steady, B has one lucky trial: A leads for small budgets, B from n = 3 on
    curves = budget_curves([row("A", [0.745, 0.745, 0.745, 0.745]), row("B", [0.70, 0.70, 0.70, 0.80], pruned=(0,))])
    assert curves.budget == 4 and curves.ranking(1) == ["A", "B"] and curves.ranking(4) == ["B", "A"]
    b2 = 0.70 + 0.10 * (1 - (3 / 4) ** 2)
    assert curves.means[1][1] == pytest.approx(b2) and b2 < 0.745  # at n = 2, B is still behind
    assert curves.stable_from == 3
    assert curves.running[1] == [0.70, 0.70, 0.70, 0.80]  # in trial order, the pruned first trial included
    text = "\n".join(render_budget_md(curves))
    assert "every n from 3 to 4: B > A" in text
    # rows with different trial counts are ranked only where every row has trials: at most C's 2
    curves = budget_curves([row("A", [0.745, 0.745, 0.745, 0.745]), row("B", [0.70, 0.70, 0.70, 0.80]),
                            row("C", [0.74, 0.70])])
    assert curves.common == 2 and curves.ranking(2) == ["A", "B", "C"] and curves.stable_from == 1
    text = "\n".join(render_budget_md(curves))
    assert "every n from 1 to 2 (the fewest trials any row ran): A > B > C" in text


def test_the_tuning_report_shows_budget_curves_and_writes_their_plot(tuned, tmp_path, capsys):
    folder, suite, a, b = tuned
    out = tmp_path / "report.md"
    assert main(["leaderboard", "--suite", str(folder / "tune.yaml"), "--store", str(a), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Budget curves" in text and "![budget curves](report_budget.png)" in text
    assert (tmp_path / "report_budget.png").read_bytes()[:4] == b"\x89PNG"

"""Tuning suites: the draw, the pruner and the selection against hand-computed cases, and a tiny
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
from mdl_bench.benchmark.suite.tuning import Pruner, Tuner, rung_value, select, trial_points


def _h(*values):
    """A valid_history: monitor ``values[e]`` at the end of epoch ``e + 1``."""
    return [{"epoch": e + 1, "batch": 10, "epoch_end": True, "monitor": v} for e, v in enumerate(values)]


# ---------------------------------------------------------------------------------------------- the draw
def test_joint_axes_set_several_keys_together():
    space = {"lr": [1, 2], "reg": [{"r": 0}, {"r": 1, "scope": "batch"}]}
    assert tuner_points(space) == [{"lr": 1, "r": 0}, {"lr": 1, "r": 1, "scope": "batch"},
                                   {"lr": 2, "r": 0}, {"lr": 2, "r": 1, "scope": "batch"}]
    with pytest.raises(UserError, match="mixes mappings and values"):
        tuner_points({"reg": [{"r": 0}, 3]})


def test_every_row_meets_the_same_recipes_and_each_point_once_before_twice():
    shared = tuner_points({"a": [1, 2, 3], "b": [True, False]})  # 6 points
    own = tuner_points({"x": [10, 20]})
    tuner = Tuner(trials=8, seed=7)
    one, two = trial_points(shared, own, tuner, "A@d"), trial_points(shared, own, tuner, "B@d")
    strip = lambda points: [{k: p[k] for k in ("a", "b")} for p in points]
    assert strip(one) == strip(two)  # trial i of every row: the same shared point
    first = strip(one)[:6]
    assert sorted(map(str, first)) == sorted(map(str, shared))  # all 6 before any repeats
    assert [p["x"] for p in one[:2]] and sorted(p["x"] for p in one[:2]) == [10, 20]
    assert trial_points(shared, own, tuner, "A@d") == one  # seeded: the same draw every time
    assert trial_points(shared, own, Tuner(trials=8, seed=8), "A@d") != one
    assert len(trial_points(shared, own, Tuner(), "A@d")) == 12  # no `trials`: the whole grid


def test_tuner_block_is_checked():
    with pytest.raises(UserError, match="unknown tuner key 'trails'"):
        Tuner.parse({"trails": 3}, "suite x")
    for bad in ({"trials": 0}, {"keep": 0}, {"keep": 1.5}, {"rungs": [0]}, {"rungs": "1"}, {"seed": "a"}):
        with pytest.raises(UserError):
            Tuner.parse(bad, "suite x")


# ---------------------------------------------------------------------------------------------- the pruner
def test_rung_values_of_stored_trials():
    assert rung_value(_h(0.5, 0.7, 0.6), 1, "max", False) == 0.5
    assert rung_value(_h(0.5, 0.7, 0.6), 3, "max", False) == 0.7
    assert rung_value(_h(0.5, 0.7), 3, "max", False) == 0.7   # ended by early stopping before the rung
    assert rung_value(_h(0.5), 3, "max", True) is None        # pruned before the rung: not counted
    assert rung_value(_h(0.5, 0.4), 2, "min", False) == 0.4


def test_pruner_keeps_the_best_fraction_of_the_earlier_trials():
    tuner = Tuner(trials=9, rungs=(1, 3), keep=0.34)
    first = Pruner(tuner, [])
    assert first({"epoch": 1, "epoch_end": True, "monitor": 0.1}) is None  # nothing to compare with
    earlier = [(_h(0.60, 0.70, 0.72), None), (_h(0.65), "pruned at epoch 1"), (_h(0.55, 0.58), None)]
    # epoch 1: values 0.60, 0.65, 0.55 and its own; n = 4 -> the best floor(4 * 0.34) = 1 go on
    assert Pruner(tuner, earlier)({"epoch": 1, "epoch_end": True, "monitor": 0.66}) is None
    reason = Pruner(tuner, earlier)({"epoch": 1, "epoch_end": True, "monitor": 0.62})
    assert reason == "pruned at epoch 1: rank 2 of 4 trials (the best 1 go on)"
    # epoch 3: the pruned trial drops out, the converged one counts with its best (0.58): n = 3 -> 1 goes on
    p = Pruner(tuner, earlier)
    assert p({"epoch": 1, "epoch_end": True, "monitor": 0.70}) is None
    assert p({"epoch": 2, "epoch_end": True, "monitor": 0.69}) is None  # not a rung
    assert p({"epoch": 3, "epoch_end": False, "monitor": 0.71}) is None  # not the end of the epoch
    assert p({"epoch": 3, "epoch_end": True, "monitor": 0.71}).startswith("pruned at epoch 3: rank 2 of 3")
    # minimising (logloss): lower is better
    assert Pruner(tuner, [(_h(0.50), None)], "min")({"epoch": 1, "epoch_end": True, "monitor": 0.4}) is None


def test_selection_takes_the_best_unpruned_trial_and_the_earlier_on_a_tie():
    results = [{"valid_history": _h(0.7, 0.8)}, {"valid_history": _h(0.9), "stopped_by": "pruned at epoch 1"},
               None, {"valid_history": _h(0.6, 0.8)}, {"valid_history": _h(0.75)}]
    assert select(results, "max") == 0
    assert select(results, "min") == 3  # 0.6 (trial 3) beats 0.7 (trial 0) and 0.75
    assert select([None, {"valid_history": []}], "max") is None


# ---------------------------------------------------------------------------------------------- end to end
TUNE = {
    "name": "tinytune",
    "description": "two rows, four trials each",
    "seeds": [5],
    "overrides": {"epochs": 3, "batch_size": 1024, "early_stop_patience": 1},
    "tuner": {"trials": 4, "seed": 3, "rungs": [1], "keep": 0.5},
    "tuner_space": {"learning_rate": [1.0e-2, 3.0e-2, 1.0e-3], "batch_norm": [True, False]},
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
    assert len(_trials(a)) == 8 and _trials(a) == _trials(b)  # same trials, epochs and pruning decisions
    assert any(t[4] for t in _trials(a)), "the rung pruned nothing: the test does not exercise the pruner"
    rows_a, rows_b = build_tuning(suite, str(a)), build_tuning(suite, str(b))
    assert [r.chosen for r in rows_a] == [r.chosen for r in rows_b]
    assert all(r.chosen is not None for r in rows_a)
    for row in rows_a:
        chosen = row.chosen_trial
        assert not chosen.result.get("stopped_by")
        best = max(h["monitor"] for h in chosen.result["valid_history"])
        others = [max(h["monitor"] for h in t.result["valid_history"]) for t in row.trials
                  if not t.result.get("stopped_by")]
        assert best == max(others)
    # trial i of both rows: the same recipe point
    recipe = lambda t: {k: t.variant.tuned[k] for k in ("learning_rate", "batch_norm")}
    assert [recipe(t) for t in rows_a[0].trials] == [recipe(t) for t in rows_a[1].trials]


def test_trials_never_read_the_test_split(tuned):
    folder, suite, a, b = tuned
    with closing(sqlite3.connect(str(a))) as conn:
        splits = {s for (s,) in conn.execute("SELECT DISTINCT split FROM metrics")}
        configs = [c for (c,) in conn.execute("SELECT json_extract(config_json, '$.evaluate_test') FROM runs")]
    assert splits == {"valid"} and configs == [0] * 8


def test_the_report_gives_the_chosen_values_as_a_config_block(tuned, capsys):
    folder, suite, a, b = tuned
    assert main(["leaderboard", "--suite", str(folder / "tune.yaml"), "--store", str(a)]) == 0
    text = capsys.readouterr().out
    assert "# Tuning suite tinytune" in text and "**chosen**" in text and "pruned at epoch 1" in text
    block = yaml.safe_load(text.split("```yaml\n")[1].split("```")[0])
    assert set(block) == {"SharedBottom_test", "MMoE_test"}
    assert set(block["SharedBottom_test"]) == {"learning_rate", "batch_norm", "net_dropout"}
    assert isinstance(block["MMoE_test"]["learning_rate"], float)
    assert main(["leaderboard", "--suite", str(folder / "tune.yaml"), "--store", str(a), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 9 and sum(line.split(",")[5] == "1" for line in lines[1:]) == 2


def test_jobs_run_rows_side_by_side_and_search_the_same(tuned, tmp_path):
    """Under --jobs each row's trials still start only after the earlier ones are stored, so the pruning
    decisions (and the stored trials) are those of the one-at-a-time run."""
    folder, suite, a, b = tuned
    outcome = run_suite(suite, store=str(tmp_path / "c.sqlite"), jobs=2, out=lambda line: None,
                        progress_stream=io.StringIO())
    assert not outcome.failed and _trials(tmp_path / "c.sqlite") != []
    assert sorted(_trials(tmp_path / "c.sqlite")) == sorted(_trials(a))


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
    assert "n = 3 to n = 4" in text and "B > A" in text


def test_the_tuning_report_shows_budget_curves_and_writes_their_plot(tuned, tmp_path, capsys):
    folder, suite, a, b = tuned
    out = tmp_path / "report.md"
    assert main(["leaderboard", "--suite", str(folder / "tune.yaml"), "--store", str(a), "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Budget curves" in text and "![budget curves](report_budget.png)" in text
    assert (tmp_path / "report_budget.png").read_bytes()[:4] == b"\x89PNG"

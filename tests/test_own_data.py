"""The worked "your own data" example of docs/own-data.md, end to end: a CSV with string ids and a string domain
column, the example's dataset block and its suite of all thirteen rows (no model override), run and ranked."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from mdl_bench.benchmark.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "own_data"
SURFACES = ("home", "search", "feed")


def write_my_clicks(folder: Path, rows: int = 3000, seed: int = 0) -> None:
    """``train/valid/test.csv`` (80/10/10) of a click log: string user and item ids, ``surface`` home/search/feed,
    a device, an item category, the hour and ``clicked``; users have a taste per category, so it is learnable."""
    rng = np.random.default_rng(seed)
    users, items = 150, 300
    category = rng.integers(0, 6, items)
    taste = rng.normal(0, 1.5, (users, 6))
    surface_bias = {"home": 0.0, "search": 0.8, "feed": -0.6}
    u = rng.zipf(1.6, rows) % users
    i = rng.zipf(1.4, rows) % items
    s = rng.choice(SURFACES, rows, p=[0.6, 0.3, 0.1])
    logit = taste[u, category[i]] + np.array([surface_bias[x] for x in s]) - 0.3
    clicked = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    device = rng.choice(["ios", "android", "web"], rows)
    hour = rng.integers(0, 24, rows)
    folder.mkdir(parents=True, exist_ok=True)
    cut = [int(rows * 0.8), int(rows * 0.9)]
    for name, part in zip(("train", "valid", "test"), np.split(np.arange(rows), cut)):
        with open(folder / f"{name}.csv", "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["visitor_id", "product_id", "surface", "device", "category", "hour", "clicked"])
            for r in part:
                out.writerow([f"u{u[r]:04d}", f"i{i[r]:04d}", s[r], device[r], f"c{category[i[r]]}", hour[r],
                              clicked[r]])


def test_the_own_data_example_runs_all_thirteen_rows_and_ranks_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MDL_BENCH_HOME", str(tmp_path))  # the example block reads ${MDL_BENCH_HOME}/my_clicks/
    write_my_clicks(tmp_path / "my_clicks")
    store = str(tmp_path / "results.sqlite")
    args = ["--suite", "my_clicks_quick", "--config", str(EXAMPLE), "--store", store]
    assert main(["run", *args]) == 0
    capsys.readouterr()
    assert main(["leaderboard", *args, "--format", "csv"]) == 0
    table = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(table) == 13
    assert len({row["method"] for row in table}) == 13 and int(table[0]["seeds"]) == 1
    for row in table:  # every row trained and was evaluated on each domain, labelled by its value
        for key in ("AUC", "gAUC", "AUC@home", "AUC@search", "AUC@feed"):
            assert 0.0 < float(row[key]) < 1.0, (row["method"], key)

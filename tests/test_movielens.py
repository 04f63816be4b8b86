"""MovieLens-1M from GroupLens's raw files: the converter on fixtures written in that exact format (``::``
separators, latin-1 titles, text zip codes, one genre or many), its protocol, its errors, and the acceptance: the
converted data, then its suite, trains all thirteen rows."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from mdl_bench.benchmark.cli import main
from mdl_bench.benchmark.data import movielens
from mdl_bench.kernel.paths import packaged_config_dir
from mdl_bench.kernel.errors import UserError

AGES = [1, 18, 25, 35, 45, 50, 56]
GENRES = ["Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama", "Fantasy",
          "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]
ZIPS = ["98107-2117", "T8H1N", "55455", "02460", "V5A 2B2"]
TITLES = ["Misérables, Les (1995)", "Toy Story (1995)", "Café au lait (Métisse) (1993)", "Heat (1995)"]


def write_ml1m(folder: Path, users: int = 120, movies: int = 150, ratings: int = 5000, seed: int = 0) -> dict:
    """``ratings.dat``, ``users.dat`` and ``movies.dat`` in GroupLens's format (latin-1, ``::``, Unix line ends):
    every age code, zip codes with a dash, letters or a space, titles with accents, movies with one genre and with
    six. Returns the ratings as arrays, in file order."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    age = [AGES[u % len(AGES)] for u in range(users)]
    with open(folder / "users.dat", "wb") as fh:
        for u in range(users):
            fh.write(f"{u + 1}::{'MF'[u % 2]}::{age[u]}::{u % 21}::{ZIPS[u % len(ZIPS)]}\n".encode("latin-1"))
    with open(folder / "movies.dat", "wb") as fh:
        for m in range(movies):
            count = 6 if m % 10 == 0 else 1 + m % 3
            genres = "|".join(GENRES[(m + k) % len(GENRES)] for k in range(count))
            fh.write(f"{m + 1}::{TITLES[m % len(TITLES)]}::{genres}\n".encode("latin-1"))
    user = rng.integers(1, users + 1, ratings)
    movie = rng.integers(1, movies + 1, ratings)
    taste = rng.normal(0, 1.2, (users + 1, len(GENRES)))
    score = taste[user, (movie - 1) % len(GENRES)] + rng.normal(0, 1, ratings)
    rating = np.clip(np.round(3.3 + score), 1, 5).astype(int)
    stamp = 956703932 + np.sort(rng.integers(0, 10_000_000, ratings))[rng.permutation(ratings)]
    with open(folder / "ratings.dat", "wb") as fh:
        for row in zip(user, movie, rating, stamp):
            fh.write(("::".join(map(str, row)) + "\n").encode("latin-1"))
    return {"user": user, "movie": movie, "rating": rating, "stamp": stamp, "age": np.array([0] + age)}


def read_split(out: Path, split: str) -> list[dict]:
    with open(out / f"{split}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml") / "ml-1m"  # as the zip unpacks: --raw may name the folder above
    return folder.parent, write_ml1m(folder)


def test_protocol_domains_label_features_and_a_seeded_random_split(raw, tmp_path):
    root, truth = raw
    stats = movielens.convert(root, tmp_path / "a", min_count=1, seed=7, log=lambda m: None)
    rows = {s: read_split(tmp_path / "a", s) for s in ("train", "valid", "test")}
    n = sum(len(r) for r in rows.values())
    assert n == len(truth["user"]) == stats["samples"]
    assert 0.75 < len(rows["train"]) / n < 0.85 and 0.07 < len(rows["test"]) / n < 0.13
    first = rows["train"][0]
    assert list(first) == movielens.COLUMNS
    expected_domain = {1: "0", 18: "0", 25: "1", 35: "2", 45: "2", 50: "2", 56: "2"}
    everything = [r for s in rows.values() for r in s]
    for r in everything[:500]:
        assert r["domain"] == expected_domain[int(r["age"])]
        assert r["group_id"] == r["user_id"]
        assert len(r["genres"].split("|")) <= movielens.MAX_GENRES and r["genre"] == r["genres"].split("|")[0]
    assert {r["zip"] for r in everything} == set(ZIPS)  # text zip codes are kept as they are
    assert max(len(r["genres"].split("|")) for r in everything) == 6
    positives = sum(int(r["label"]) for r in everything)
    assert positives == int((truth["rating"] > 3).sum())
    # each user is in one domain: their rows never cross domains
    domains = {}
    for r in everything:
        domains.setdefault(r["user_id"], set()).add(r["domain"])
    assert all(len(d) == 1 for d in domains.values())
    # the seed decides the split; the same seed gives the same files
    movielens.convert(root, tmp_path / "b", min_count=1, seed=7, log=lambda m: None)
    movielens.convert(root, tmp_path / "c", min_count=1, seed=8, log=lambda m: None)
    same = (tmp_path / "a" / "test.csv").read_bytes() == (tmp_path / "b" / "test.csv").read_bytes()
    other = (tmp_path / "a" / "test.csv").read_bytes() != (tmp_path / "c" / "test.csv").read_bytes()
    assert same and other


def test_time_split_cuts_at_global_timestamps(raw, tmp_path):
    root, truth = raw
    movielens.convert(root, tmp_path, split="time", min_count=1, log=lambda m: None)
    cut_valid, cut_test = np.sort(truth["stamp"])[[int(0.8 * len(truth["stamp"])), int(0.9 * len(truth["stamp"]))]]
    order = {"train": truth["stamp"] < cut_valid, "valid": (truth["stamp"] >= cut_valid) & (truth["stamp"] < cut_test),
             "test": truth["stamp"] >= cut_test}
    for split, mask in order.items():  # rows are written in file order: the split's rows are exactly these
        got = [(int(r["user_id"]), int(r["movie_id"])) for r in read_split(tmp_path, split)]
        assert got == list(zip(truth["user"][mask].tolist(), truth["movie"][mask].tolist()))


def test_the_converted_block_is_the_packaged_one(raw, tmp_path, monkeypatch):
    monkeypatch.setenv("MDL_BENCH_HOME", str(tmp_path))
    assert main(["data", "movielens", "--raw", str(raw[0]), "--out", str(tmp_path / "raw" / "movielens1m")]) == 0
    written = yaml.safe_load((tmp_path / "raw" / "movielens1m" / "dataset_config.yaml").read_text())
    packaged = yaml.safe_load((packaged_config_dir() / "dataset_config.yaml").read_text())
    assert written["movielens1m"] == packaged["movielens1m"]


@pytest.mark.parametrize("edit,args,pattern", [
    (lambda d: (d / "users.dat").unlink(), [], r"MovieLens-1M file users.dat not found in .*; download ml-1m.zip"),
    (lambda d: (d / "ratings.dat").write_bytes(b"1::2::5\n" * 50), [],
     r"ratings.dat: 50 of 50 lines are malformed .*first: line 1 \(3 fields, expected 4"),
    (lambda d: (d / "users.dat").write_bytes((d / "users.dat").read_bytes().replace(b"::25::", b"::26::")), [],
     r"users.dat: \d+ of 20 lines are malformed .*age 26 is not one of MovieLens's codes"),
    (None, ["--split", "time", "--seed", "3"], r"--seed 3 has no effect with --split time"),
    (None, ["--seed", "-1"], r"--seed must be in \[0, 4294967295\], got -1"),
])
def test_bad_input_is_a_one_line_error(tmp_path, capsys, edit, args, pattern):
    write_ml1m(tmp_path / "raw", users=20, movies=10, ratings=50)
    if edit:
        edit(tmp_path / "raw")
    code = main(["data", "movielens", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert re.search(pattern, err), err
    assert not (tmp_path / "out" / "train.csv").exists()


def test_converted_movielens_then_its_suite_trains_all_thirteen_rows(raw, tmp_path, monkeypatch, capsys):
    """The acceptance: `mdl-bench data movielens` on a fixture, then the packaged `main_movielens` suite (its thirteen
    rows at the `_test` sizes, one seed) trains every row on the packaged `movielens1m` block."""
    monkeypatch.setenv("MDL_BENCH_HOME", str(tmp_path))
    assert main(["data", "movielens", "--raw", str(raw[0]), "--min-count", "2"]) == 0
    suite = yaml.safe_load((packaged_config_dir() / "suites" / "main_movielens.yaml").read_text())
    assert suite["datasets"] == ["movielens1m"] and len(suite["expids"]) == 13
    def small(entry):  # the same row at the `_test` sizes
        if isinstance(entry, dict):
            return {**entry, "expid": small(entry["expid"])}
        return entry.replace("_default", "_test") if entry.endswith("_default") else f"{entry}_test"

    suite.update(seeds=[1], expids=[small(e) for e in suite["expids"]])
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(suite))
    assert main(["run", "--suite", str(path), "--store", str(tmp_path / "r.sqlite")]) == 0
    capsys.readouterr()
    assert main(["leaderboard", "--suite", str(path), "--store", str(tmp_path / "r.sqlite"), "--format", "csv"]) == 0
    table = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert len(table) == 13
    for row in table:
        for key in ("AUC", "gAUC", "AUC@under25", "AUC@25to34", "AUC@35plus"):
            assert 0.0 < float(row[key]) < 1.0, (row["method"], key)

"""``mdl-bench perf``: the structure of its output on a tiny configuration (no timing is asserted)."""
import copy
import json
import os

import numpy as np
import pytest

from mdl_bench.benchmark import cli
from mdl_bench.model_zoo.core.metrics import gauc_score
from mdl_bench.benchmark.perf.run import run_domain_scaling, run_perf
from mdl_bench.benchmark.perf.measure import gauc_data
from mdl_bench.benchmark.perf.plot import plot_scaling
from mdl_bench.benchmark.perf.proc import is_ray_process, tree_usage
from mdl_bench.benchmark.perf.report import render_markdown
from mdl_bench.benchmark.perf.scaling import domain_curve_table, explain_scaling
from mdl_bench.benchmark.perf.settings import PerfConfig
from mdl_bench.benchmark.perf.targets import evaluate_targets
from mdl_bench.benchmark.perf.timing import FirstBatches, component_times
from conftest import build_model


def tiny_config(**over) -> PerfConfig:
    values = dict(models=["Crocodile", "ME_MMoE"], expid_suffix="_test", dataset_id="tiny_synth", batches=2,
                  repeats=1, eval_batches=1, cov_repeats=1, matched_batches=2, matched_epochs=1, stock=False,
                  stock_bare_batches=2, gauc_rows=20_000, gauc_users=300, build_rows=3_000, build_fuxictr=False,
                  scaling_tables=(1, 2), scaling_domains=(2, 3), scaling_fixed_tables=2, scaling_steps=2,
                  scaling_rows=2_000, quick=True)
    values.update(over)
    return PerfConfig(**values)


@pytest.fixture(scope="module")
def perf_result(tmp_path_factory, tiny):
    out = tmp_path_factory.mktemp("perf") / "perf.json"
    return run_perf(tiny_config(), out, command="test")


def test_perf_writes_json_markdown_and_png(perf_result):
    files = perf_result["files"]
    for key in ("json", "markdown", "png"):
        assert os.path.isfile(files[key]), key
    assert json.loads(open(files["json"]).read()) == perf_result  # what is returned is what is written
    assert list(perf_result)[:3] == ["meta", "targets", "models"]  # ratios first
    assert perf_result["meta"]["quick"] is True and len(perf_result["meta"]["load_start"]) == 3
    others = perf_result["meta"]["others_cpu"]  # other processes' CPU share per phase, to judge the timings
    assert {"models", "covloss", "matched", "scaling", "gauc", "build"} <= set(others)
    assert all(0.0 <= v <= 1.0 for v in others.values())


def test_perf_model_sections_have_every_measure(perf_result):
    assert list(perf_result["models"]) == ["Crocodile", "ME_MMoE"]
    for entry in perf_result["models"].values():
        assert entry["real_sps"] > 0 and entry["bare_sps"] > 0 and entry["eval_sps"] > 0
        assert entry["real_over_bare"] == pytest.approx(entry["real_sps"] / entry["bare_sps"])
        assert set(entry["split_ms"]) == {"data", "forward", "backward", "optimizer", "step"}
        assert entry["batch_size"] == 512 and entry["num_parameters"] > 0
    cov = perf_result["covloss"]
    assert set(cov["settings"]) == {"all rows", "32 rows", "no CovLoss"}
    assert "cov_ms" not in cov["settings"]["no CovLoss"] and 0 < cov["settings"]["32 rows"]["share"]
    assert cov["crocodile_over_me_mmoe"] > 0 and cov["num_tables"] == 5
    assert set(perf_result["matched"]) == {"DNN", "MMoE"} and "stock" not in perf_result
    assert perf_result["build"]["project"]["seconds"] > 0 and "fuxictr" not in perf_result["build"]
    assert perf_result["ray"]["default_path"] == 0
    assert perf_result["memory"]["project_peak_rss_bytes"] > 0
    assert "skipped" in perf_result["library"]  # no --library-path: the public library is not measured


def test_perf_gauc_agrees_with_fuxictr(perf_result):
    gauc = perf_result["gauc"]
    assert gauc["rows"] == 20_000 and gauc["max_abs_diff"] <= 1e-9
    assert gauc["project_value"] == pytest.approx(gauc["fuxictr_value"], abs=1e-9)


def test_perf_scaling_has_every_point(perf_result):
    scaling = perf_result["scaling"]
    assert scaling["tables"]["values"] == [1, 2] and scaling["domains"]["values"] == [2, 3]
    for axis, key in (("tables", "num_tables"), ("domains", "num_domains")):
        for name in ("Crocodile", "ME_MMoE"):
            points = scaling[axis][name]
            assert [p[key] for p in points] == scaling[axis]["values"]
            assert all({"embedding", "experts", "gate", "towers"} <= set(p["components_ms"]) for p in points)
    assert "cov" in scaling["tables"]["Crocodile"][0]["components_ms"]
    assert "Why:" in scaling["explanation"]


def test_the_k_curve_alone_splits_the_step_into_towers_and_the_rest(tiny, tmp_path):
    result = run_domain_scaling(tiny_config(scaling_domains=(2, 4)), tmp_path / "k.json", command="test")
    assert json.loads(open(result["files"]["json"]).read()) == result
    curve = result["domains"]
    assert curve["values"] == [2, 4]
    for name in ("Crocodile", "ME_MMoE"):
        assert [p["num_domains"] for p in curve[name]] == [2, 4]
        for point in curve[name]:
            assert point["step_min_ms"] <= point["step_ms"]
            assert point["components_min_ms"]["towers"] <= point["components_ms"]["towers"]
    rows = [line for line in domain_curve_table(curve).splitlines() if line.startswith("| ME_MMoE | 4 |")]
    step, towers, rest = (float(cell) for cell in rows[0].split("|")[3:6])
    assert step == pytest.approx(towers + rest, abs=0.11)
    assert domain_curve_table(curve) in open(result["files"]["markdown"]).read()


def test_a_model_that_does_not_split_its_step_is_reported_whole(perf_result, tiny, tiny_batch, tmp_path):
    """Parts come from the model's own ``step_components``; ``None`` there is "not split", never an error."""
    assert component_times(build_model(tiny, "SharedBottom_test"), tiny_batch, 1) is None
    result = copy.deepcopy(perf_result)
    for axis in ("tables", "domains"):
        for point in result["scaling"][axis]["ME_MMoE"]:
            point["components_ms"] = None
    result["scaling"]["explanation"] = explain_scaling(result["scaling"])
    text = render_markdown(result)
    assert "Not split into parts (the model's `step_components` returns None): ME-MMoE." in text
    assert "- ME-MMoE, M 1 -> 2: step" in text and "(step not split into parts); grew:" in text
    assert "| Crocodile embedding |" in text and "| Crocodile cov |" in text  # Crocodile's parts are still shown
    assert "Not split" not in render_markdown(perf_result)
    assert os.path.isfile(plot_scaling(result["scaling"], tmp_path / "scaling.png"))


def test_perf_targets_and_markdown(perf_result):
    targets = {row["target"].split(" (")[0]: row for row in perf_result["targets"]}
    assert targets["DNN: this package / FuxiCTR stock pipeline"]["met"] is None  # skipped, not failed
    assert targets["Ray processes on the default path"]["met"] is True
    assert targets["gAUC |this package - fuxictr|"]["met"] is True
    text = render_markdown(perf_result)
    assert text == open(perf_result["files"]["markdown"]).read()
    assert text.index("## Targets") < text.index("## Training throughput")  # ratios first
    for heading in ("## FuxiCTR's stock pipeline", "## CovLoss", "## gAUC", "## Dataset build", "## Scaling"):
        assert heading in text
    assert "| ME-MMoE |" in text and "not measured (stock run skipped)" in text


def test_targets_flag_a_missed_goal():
    result = {"models": {"A": {"real_over_bare": 0.5}}, "covloss": {"settings": {"32 rows": {"share": 0.2}}},
              "gauc": {"speedup": 30.0, "max_abs_diff": 0.0, "rows": 10}, "ray": {"default_path": 1},
              "meta": {"others_cpu": {"models": 0.6, "gauc": 0.1}}}
    rows = evaluate_targets(result)
    met = {row["target"].split(" (")[0].split(",")[0]: row["met"] for row in rows}
    notes = {row["target"].split(" (")[0].split(",")[0]: row["note"] for row in rows}
    assert "other processes used 60% of the CPUs" in notes["training / bare loop"]
    assert notes["gAUC speed-up over fuxictr.metrics"] == ""  # 10% is not flagged
    assert met["training / bare loop"] is False and met["CovLoss share of a Crocodile step"] is False
    assert met["gAUC speed-up over fuxictr.metrics"] is True and met["Ray processes on the default path"] is False


def test_gauc_data_has_ties_and_skippable_users():
    y, score, group = gauc_data(5_000, 400)
    assert np.unique(score).shape[0] < 1_000  # ties exercise the average-rank rule
    single_class = [g for g in np.unique(group) if y[group == g].min() == y[group == g].max()]
    assert single_class  # users with one class are skipped by both implementations
    assert 0.5 < gauc_score(y, score, group) < 1.0


def test_process_tree_helpers_and_first_batches():
    rss, ray = tree_usage(os.getpid())
    assert rss > 0 and ray == 0
    assert is_ray_process("/venv/lib/python3.11/site-packages/ray/core/src/ray/raylet/raylet --node")
    assert is_ray_process("ray::IDLE") and not is_ray_process("/venv/bin/python -m pytest tests/test_perf.py")
    batches = FirstBatches(list(range(10)), 3)
    assert len(batches) == 3 and list(batches) == [0, 1, 2]
    assert len(FirstBatches(list(range(2)), 5)) == 2 and len(FirstBatches(list(range(4)), None)) == 4


def test_cli_perf_rejects_a_non_json_out(capsys, tmp_path):
    assert cli.main(["perf", "--quick", "--out", str(tmp_path / "report.md")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and ".json" in err and err.count("\n") == 1


def test_the_stock_comparison_builds_the_same_mmoe_on_both_sides(tiny, tmp_path, monkeypatch):
    """FuxiCTR's stock MMoE is plain MLP_Blocks with K experts unless told otherwise: ours runs without batch norm
    and dropout whatever its tuned block says, and the stock side is handed our number of experts."""
    from mdl_bench.benchmark.perf import measure

    seen = {}
    real_prepare = measure.prepare
    monkeypatch.setattr(measure, "prepare", lambda expid, over: seen.setdefault(expid, dict(over)) and
                        real_prepare(expid, over))
    matched = measure.measure_matched(tiny_config(), tmp_path)
    assert seen["MMoE_test"]["batch_norm"] is False and seen["MMoE_test"]["net_dropout"] == 0
    captured = {}
    monkeypatch.setattr(measure, "stock_task", lambda task, spec, work: captured.update(spec) or {"models": {}})
    measure.measure_stock(tiny_config(), tmp_path, matched)
    assert captured["num_experts"] == matched["MMoE"]["num_experts"]

"""``mdl-bench perf --library-path``: the matching of this package's models to a public library's, against a tiny
fake of that library written to a temporary folder (no network, no checkout of the real one)."""
from __future__ import annotations

import textwrap

import pytest

from mdl_bench.benchmark import cli
from mdl_bench.benchmark.perf import library as L
from mdl_bench.benchmark.perf.settings import PerfConfig
from mdl_bench.kernel.errors import UserError
from conftest import build_model

FEATURES = '''
class SparseFeature:
    def __init__(self, name, vocab_size, embed_dim=None, **kwargs):
        self.name, self.vocab_size, self.embed_dim = name, vocab_size, embed_dim


class DenseFeature:
    def __init__(self, name):
        self.name, self.embed_dim = name, 1
'''

MODELS = '''
import torch
from torch import nn


class _Recorded(nn.Module):
    """Keeps its constructor's arguments; predicts from the sum of its features' embeddings."""

    def __init__(self, features, *args, **kwargs):
        super().__init__()
        self.features, self.args, self.kwargs = features, args, kwargs
        self.tables = nn.ModuleDict({f.name: nn.Embedding(f.vocab_size, f.embed_dim) for f in features})
        self.out = nn.Linear(features[0].embed_dim, 1)

    def forward(self, x):
        assert x["domain_indicator"].dtype == torch.long
        h = sum(self.tables[f.name](x[f.name]) for f in self.features)
        return torch.sigmoid(self.out(h)).squeeze(1)


class SharedBottom(_Recorded):
    pass


class MMOE(_Recorded):
    pass


class AdaSparse(_Recorded):
    def __init__(self, sce_features, agn_features, **kwargs):
        super().__init__(sce_features + agn_features, sce_features=sce_features, agn_features=agn_features,
                         **kwargs)
'''


@pytest.fixture
def fake_library(tmp_path):
    """A checkout with SharedBottom, MMOE and AdaSparse, and no PLE or Star."""
    root = tmp_path / "checkout"
    package = root / L.PACKAGE
    for folder, text in ((package, ""), (package / "basic", ""), (package / "models", ""),
                         (package / "models" / "multi_domain", MODELS)):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "__init__.py").write_text(textwrap.dedent(text))
    (package / "basic" / "features.py").write_text(FEATURES)
    return root


def test_no_path_skips_with_one_line():
    with pytest.raises(UserError) as err:
        L.load_library(None)
    assert "skipped" in str(err.value) and "\n" not in str(err.value)


def test_a_path_without_the_library_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError) as err:
        L.load_library(tmp_path / "nowhere")
    message = str(err.value)
    assert "nowhere" in message and L.PACKAGE in message and "\n" not in message


def test_the_command_stops_before_measuring_on_a_wrong_path(tmp_path, capsys):
    code = cli.main(["perf", "--quick", "--library-path", str(tmp_path / "nowhere"), "--out",
                     str(tmp_path / "perf.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "nowhere" in err[0]
    assert not (tmp_path / "perf.json").exists()


def test_only_the_models_the_library_has_are_matched(fake_library):
    lib = L.load_library(fake_library)
    names = ["SharedBottom", "MMoE", "PLE", "STAR", "PEPNet", "Crocodile"]
    assert [m.ours for m in L.matched(lib, names)] == ["SharedBottom", "MMoE"]
    assert lib.commit is None  # not a git checkout


def test_the_library_model_gets_our_fields_widths_and_domains(fake_library, tiny):
    lib = L.load_library(fake_library)
    model = build_model(tiny, "SharedBottom_test")
    params = dict(tiny.params, bottom_hidden_units=[16, 8], tower_hidden_units=[8], batch_norm=True)
    match = next(m for m in L.MATCHES if m.ours == "SharedBottom")
    net = L.build_theirs(lib, match, model, params)
    assert [f.name for f in net.features] == list(model.embedding.fields)
    assert {f.embed_dim for f in net.features} == {model.embedding.embedding_dim}
    spec = model.feature_map.features
    assert all(f.vocab_size == spec[f.name]["vocab_size"] for f in net.features)
    assert net.args == (model.num_domains,)
    assert net.kwargs["bottom_params"]["dims"] == [16, 8] and net.kwargs["tower_params"]["dims"] == [8]


def test_adasparse_reads_the_domain_field_as_its_scenario_feature(fake_library, tiny):
    lib = L.load_library(fake_library)
    model = build_model(tiny, "AdaSparse_test")
    inputs = L.library_inputs(lib, model)
    assert [f.name for f in inputs.domain] == [model.domain_field]
    assert [f.name for f in inputs.other] == [n for n in model.embedding.fields if n != model.domain_field]


def test_a_model_without_batch_norm_is_refused(fake_library, tiny):
    lib = L.load_library(fake_library)
    model = build_model(tiny, "SharedBottom_test")
    match = next(m for m in L.MATCHES if m.ours == "SharedBottom")
    with pytest.raises(UserError, match="batch norm"):
        L.build_theirs(lib, match, model, dict(tiny.params, bottom_hidden_units=[8], tower_hidden_units=[4],
                                               batch_norm=False))


def test_library_batches_carry_the_domain_as_a_tower_index(tiny, tiny_batch):
    model = build_model(tiny, "SharedBottom_test")
    (x, y), = L.library_batches(model, [tiny_batch])
    assert set(x) == set(model.embedding.fields) | {L.DOMAIN_KEY}
    assert x[L.DOMAIN_KEY].max() < model.num_domains and y.dtype.is_floating_point
    assert y.shape == x[L.DOMAIN_KEY].shape


def test_measure_library_times_both_sides(fake_library, tiny, tmp_path):
    cfg = PerfConfig(models=["SharedBottom", "PLE", "PEPNet"], expid_suffix="_test", dataset_id="tiny_synth",
                     batches=2, repeats=1, min_epoch_seconds=0, library_path=str(fake_library))
    out = L.measure_library(cfg.library_path, cfg, list(cfg.models), tmp_path)
    assert list(out["models"]) == ["SharedBottom"]
    entry = out["models"]["SharedBottom"]
    assert entry["real_sps"] > 0 and entry["theirs_bare_sps"] > 0
    assert entry["real_over_theirs"] == pytest.approx(entry["real_sps"] / entry["theirs_bare_sps"])
    assert set(out["unmatched"]) == {"PLE", "PEPNet"} and "no PLE" in out["unmatched"]["PLE"]


def test_our_side_runs_the_recipe_both_sides_share(fake_library, tiny, tmp_path, monkeypatch):
    """Whatever the expid's own batch norm and dropout (the tuned defaults may turn either off), our side is
    built with the library's: batch norm on, no dropout; the entry records it."""
    from mdl_bench.benchmark.perf import measure

    seen = []
    real_prepare = measure.prepare
    monkeypatch.setattr(measure, "prepare", lambda expid, overrides: seen.append(dict(overrides)) or
                        real_prepare(expid, {**overrides}))
    cfg = PerfConfig(models=["SharedBottom"], expid_suffix="_test", dataset_id="tiny_synth", batches=2, repeats=1,
                     min_epoch_seconds=0, library_path=str(fake_library))
    entry = L.measure_library(cfg.library_path, cfg, ["SharedBottom"], tmp_path)["models"]["SharedBottom"]
    assert seen and seen[0]["batch_norm"] is True and seen[0]["net_dropout"] == 0
    assert entry["recipe"] == L.MATCHED_RECIPE and entry["ours_overrides"] == {}


def test_ple_runs_one_level_on_both_sides():
    """The library's PLE levels repeat the whole expert MLP; ours split it over num_levels: one level on both
    sides is the same network."""
    match = next(m for m in L.MATCHES if m.ours == "PLE")
    assert dict(match.ours_overrides) == {"num_levels": 1} and "num_levels 1" in match.how


def test_the_report_shows_the_comparison_or_why_it_was_skipped():
    from mdl_bench.benchmark.perf.report import _library
    from mdl_bench.benchmark.perf.targets import evaluate_targets

    assert _library({"skipped": L.SKIPPED}) == ["", f"Public library: {L.SKIPPED}."]
    entry = {"display_name": "Shared Bottom", "theirs": "SharedBottom", "how": "same widths", "real_sps": 900.0,
             "bare_sps": 1000.0, "theirs_bare_sps": 1000.0, "real_over_theirs": 0.9, "num_parameters": 10,
             "theirs_num_parameters": 10}
    library = {"library": "Scenario-Wise Rec", "package": L.PACKAGE, "commit": "0123456789abcdef",
               "models": {"SharedBottom": entry}, "unmatched": {"PEPNet": "not there"}}
    text = "\n".join(_library(library))
    assert "Both sides ran" not in text  # an entry without a recipe (older perf.json) says nothing about it
    entry["recipe"] = dict(L.MATCHED_RECIPE)
    assert "Both sides ran with batch_norm True, net_dropout 0.0" in "\n".join(_library(library))
    assert "| Shared Bottom | SharedBottom | 900 | 1,000 | 1,000 | 0.90 |" in text and "PEPNet: not there" in text
    row = next(r for r in evaluate_targets({"library": library}) if "Scenario-Wise" in r["target"])
    assert row["value"] == 0.9 and row["met"] is False

"""The analysis tools: IA and spectra, the Diversity Index, covariance heatmaps, memory of the table SVDs, the
model adapters, the per-epoch IA recorder and ``mdl-bench analyze``."""
import json
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mdl_bench.benchmark.measure.quantities import (OutputMoments, covloss_total, dim_covariance_summary,
                                                   diversity_index, domain_norms, gram, information_abundance,
                                                   singular_values)
from mdl_bench.benchmark.measure.probe import (embedding_tables, expert_outputs, frequency_groups, table_domains)
from mdl_bench.benchmark.analysis.report import table_information
from mdl_bench.model_zoo.layers import CovLoss, MultiEmbedding
from conftest import build_model


def matrix_with_singular_values(s, rows=40, seed=0):
    rng = np.random.default_rng(seed)
    U, _ = np.linalg.qr(rng.normal(size=(rows, len(s))))
    V, _ = np.linalg.qr(rng.normal(size=(len(s), len(s))))
    return (U * np.asarray(s)) @ V.T


# ------------------------------------------------------------------ IA and singular values
def test_singular_values_and_ia_of_a_known_spectrum():
    s = [5.0, 3.0, 2.0, 1.0, 0.5, 0.0]
    A = matrix_with_singular_values(s).astype(np.float32)
    np.testing.assert_allclose(singular_values(A), s, atol=1e-5)
    assert information_abundance(singular_values(A)) == pytest.approx(11.5 / 5.0, rel=1e-6)
    assert information_abundance(np.ones(8)) == 8.0  # a perfectly balanced spectrum: IA = D
    assert information_abundance([4.0, 0.0, 0.0]) == 1.0  # rank one: IA = 1
    assert np.isnan(information_abundance(np.zeros(3)))


def test_gram_of_a_strided_view_and_of_selected_rows_in_chunks():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(1000, 12)).astype(np.float32)
    view = W[:, 4:8]  # one table of a wider weight, not contiguous
    np.testing.assert_allclose(gram(view, chunk=37), view.astype(np.float64).T @ view.astype(np.float64), rtol=1e-10)
    rows = np.array([3, 999, 10, 500])
    sub = view[rows].astype(np.float64)
    np.testing.assert_allclose(gram(view, rows, chunk=3), sub.T @ sub, rtol=1e-10)
    np.testing.assert_allclose(singular_values(view, rows), np.linalg.svd(sub, compute_uv=False), rtol=1e-6)


def test_frequency_groups_most_frequent_first_and_unseen_rows_left_out():
    counts = np.array([0, 5, 1, 9, 0, 3, 7, 2])
    groups = frequency_groups(counts, 3)
    assert [g.tolist() for g in groups] == [[3, 6], [1, 5], [7, 2]]


# ------------------------------------------------------------------ Diversity Index
SD = np.array([[2, 2, 2, 2, 0, 0, 0, 0],  # domain 0's network strong on rows 0-3
               [0, 0, 0, 0, 2, 2, 2, 2]], dtype=float)  # domain 1's strong on rows 4-7


def test_diversity_index_eq3_bound_experts_known_answer():
    experts = np.array([[2, 2, 0, 0, 0, 0, 0, 2],   # domain 0's expert
                        [0, 0, 0, 2, 2, 0, 2, 2]],  # domain 1's expert
                       dtype=float)
    di = diversity_index(SD, experts, [0, 1], top=1.0, bottom=0.5, absolute=True)
    assert di.equation == 3
    # D(0,1) = rows 0-3: expert 0 strong and expert 1 weak on rows 0, 1 -> 2/4
    # D(1,0) = rows 4-7: expert 1 strong and expert 0 weak on rows 4, 6 -> 2/4
    assert di.per_pair[0, 1] == 0.5 and di.per_pair[1, 0] == 0.5
    assert di.sizes[0, 1] == 4 and di.sizes[1, 0] == 4
    assert np.isnan(di.per_pair[0, 0]) and di.mean == 0.5
    assert di.to_dict(["S0", "S1"])["per_pair"] == {"S0>S1": 0.5, "S1>S0": 0.5}


def test_diversity_index_eq2_shared_experts_known_answer():
    experts = np.array([[2, 0, 2, 0, 2, 0, 2, 2],
                        [0, 0, 2, 0, 0, 0, 2, 0],
                        [1, 1, 1, 1, 1, 1, 1, 1]], dtype=float)  # never strong nor weak
    di = diversity_index(SD, experts, [None, None, None], top=1.5, bottom=0.5, absolute=True)
    assert di.equation == 2
    # a strong expert and another weak one: rows 0, 4, 7 (not 2, 6: both strong; not 1, 3, 5: none strong)
    assert di.per_pair[0, 1] == pytest.approx(1 / 4) and di.per_pair[1, 0] == pytest.approx(2 / 4)


def test_diversity_index_one_expert_is_never_both_strong_and_weak():
    dead = np.zeros((1, 8))  # quantile thresholds 0 and 0: strong and weak at once, but it is one expert
    assert diversity_index(SD, dead, [None]).per_pair[0, 1] == 0.0


def test_diversity_index_missing_domain_expert_and_empty_sets():
    experts = np.ones((2, 8))
    di = diversity_index(SD, experts, [0, None], top=1.0, bottom=0.5, absolute=True)
    assert np.isnan(di.per_pair).all() and np.isnan(di.mean)  # domain 1 has no bound expert
    flat = np.ones((2, 8))
    di = diversity_index(flat, experts, [None, None], top=1.5, bottom=0.5, absolute=True)
    assert (di.sizes == 0).all() and np.isnan(di.mean)  # no row is strong for one SD network and weak for another


def test_per_expert_quantiles_ignore_the_scale_of_an_expert_pooled_do_not():
    rng = np.random.default_rng(4)
    sd = rng.gamma(2.0, size=(3, 500))
    experts = rng.gamma(2.0, size=(3, 500))
    scaled = experts * np.array([[10.0], [1.0], [1.0]])
    bound = [None] * 3
    assert diversity_index(sd, experts, bound).mean == diversity_index(sd, scaled, bound).mean
    assert diversity_index(sd, experts, bound, scope="pooled").mean != diversity_index(sd, scaled, bound,
                                                                                       scope="pooled").mean


# Two experts on the rows of SD: A large (6-7), B small (0-1); their ranks move partly apart.
A = [6, 6, 7, 7, 6, 6, 7, 7]
B = [0, 1, 0, 1, 0, 1, 0, 1]


def test_diversity_index_fixed_and_quantile_thresholds_by_hand():
    experts = np.array([A, B], dtype=float)
    # D(i,j) is rows 0-3 / rows 4-7 under both rules (SD's per-network and pooled quantiles are both 2 and 0)
    quantile = diversity_index(SD, experts, [None, None])
    fixed = diversity_index(SD, experts, [None, None], scope="pooled")
    # fixed: pooled 16 norms, numpy's linear quantiles: tau_t = 6 + 0.25 * 1 = 6.25, tau_b = 0 + 0.75 * 1 = 0.75;
    # A strong on rows 2, 3, 6, 7, B weak on rows 0, 2, 4, 6, A never weak, B never strong -> hits on rows 2, 6
    assert fixed.rule == "fixed" and fixed.tau["tau_t"] == [6.25, 6.25] and fixed.tau["tau_b"] == [0.75, 0.75]
    assert fixed.per_pair[0, 1] == 0.25 and fixed.per_pair[1, 0] == 0.25 and fixed.mean == 0.25
    # quantile: A's own (7, 6), B's own (1, 0): A strong 2, 3, 6, 7 / weak 0, 1, 4, 5; B strong 1, 3, 5, 7 / weak
    # 0, 2, 4, 6 -> a strong expert and another weak one on rows 1, 2, 5, 6
    assert quantile.rule == "quantile" and quantile.tau["tau_t"] == [7.0, 1.0] and quantile.tau["tau_b"] == [6.0, 0.0]
    assert quantile.per_pair[0, 1] == 0.5 and quantile.per_pair[1, 0] == 0.5 and quantile.mean == 0.5
    # eq. (3), A bound to domain 0 and B to domain 1: D(0,1) needs A strong and B weak (row 2 of rows 0-3 under
    # both rules); D(1,0) needs B strong and A weak: never with the fixed thresholds, row 5 with the quantile ones
    fixed3 = diversity_index(SD, experts, [0, 1], scope="pooled")
    quantile3 = diversity_index(SD, experts, [0, 1])
    assert fixed3.equation == 3 and fixed3.per_pair[0, 1] == 0.25 and fixed3.per_pair[1, 0] == 0.0
    assert fixed3.mean == 0.125
    assert quantile3.per_pair[0, 1] == 0.25 and quantile3.per_pair[1, 0] == 0.25 and quantile3.mean == 0.25
    # the fixed rule is invariant to a global rescaling of a model's outputs, not to one expert's
    assert diversity_index(SD, 10 * experts, [None, None], scope="pooled").mean == fixed.mean
    assert diversity_index(SD, experts * [[1.0], [10.0]], [None, None], scope="pooled").mean != fixed.mean
    as_dict = fixed.to_dict(["S0", "S1"])
    assert as_dict["rule"] == "fixed" and as_dict["thresholds"]["single_domain_tau_t"] == [2.0, 2.0]


def test_domain_norms_concatenate_the_experts_of_a_domain():
    norms = np.array([[3.0, 0.0], [4.0, 1.0], [7.0, 7.0]])
    grouped = domain_norms(norms, [0, 0, None], 2)
    np.testing.assert_allclose(grouped[0], [5.0, 1.0])
    assert np.isnan(grouped[1]).all()


# ------------------------------------------------------------------ heatmaps
def test_heatmaps_match_covloss_and_numpy_over_batches():
    g = torch.Generator().manual_seed(5)
    O = torch.randn(3, 90, 4, generator=g, dtype=torch.float64) + torch.arange(4, dtype=torch.float64)
    O[1] += 0.7 * O[0]  # experts 0 and 1 correlated
    moments = OutputMoments(3, 4)
    for part in torch.split(O, 40, dim=1):  # batches of 40, 40, 10 rows
        moments.update(part.numpy())
    np.testing.assert_allclose(moments.cov_block_norms(), CovLoss().block_norms(O).numpy() / 90, rtol=1e-10)
    flat = O.permute(1, 0, 2).reshape(90, 12).numpy()
    np.testing.assert_allclose(moments.dim_covariance(), np.abs(np.cov(flat.T, bias=True)), rtol=1e-8, atol=1e-12)
    for e, sigma in enumerate(moments.expert_singular_values()):
        np.testing.assert_allclose(sigma, np.linalg.svd(O[e].numpy(), compute_uv=False), rtol=1e-8)
    blocks = moments.cov_block_norms()
    assert blocks[0, 1] > 2 * blocks[0, 2]


def test_covloss_of_every_expert_pair_against_numpy():
    rng = np.random.default_rng(16)
    O = rng.normal(size=(4, 120, 3)) + np.arange(3)  # E x N x H
    O[2] = 0.5 * O[0] + 0.1 * O[2]  # experts 1 and 3 (numbered from 1) strongly covary
    O[3][:, 1] = 0.0  # a dead dimension
    moments = OutputMoments(4, 3)
    for part in np.array_split(O, 3, axis=1):
        moments.update(part)
    blocks = moments.cov_block_norms()
    for p in range(4):  # eq. (7)'s term of (p, q), the covariance over the N rows
        for q in range(4):
            cp, cq = O[p] - O[p].mean(axis=0), O[q] - O[q].mean(axis=0)
            assert blocks[p, q] == pytest.approx(np.abs(cp.T @ cq / 120).sum() / 9, rel=1e-10)
    direct = sum(np.abs(np.cov(O[p].T, O[q].T, bias=True)[:3, 3:]).sum() / 9 for p in range(4) for q in range(p + 1))
    assert covloss_total(blocks) == pytest.approx(direct, rel=1e-10)
    # the training loss with normalization "mean" on all rows is the same sum
    torch_loss = CovLoss(normalization="mean")(torch.from_numpy(O)).item()
    assert covloss_total(blocks) == pytest.approx(torch_loss, rel=1e-9)
    assert covloss_total(blocks, "p>q") == pytest.approx(direct - sum(blocks[e, e] for e in range(4)), rel=1e-10)
    summary = dim_covariance_summary(moments.covariance(), 4, high=0.2)
    flat = O.transpose(1, 0, 2).reshape(120, 12)
    cov = np.cov(flat.T, bias=True)
    expert = np.repeat(np.arange(4), 3)
    cross = expert[:, None] != expert[None, :]
    alive = flat.std(axis=0) > 0
    corr = np.abs(np.corrcoef(flat[:, alive].T))
    cross_alive = cross[np.ix_(alive, alive)]
    assert summary["dead_dims"] == 1 and summary["dims"] == 12
    assert summary["cross_mean_abs_cov"] == pytest.approx(np.abs(cov[cross]).mean(), rel=1e-9)
    assert summary["cross_max_abs_cov"] == pytest.approx(np.abs(cov[cross]).max(), rel=1e-9)
    assert summary["cross_mean_abs_corr"] == pytest.approx(corr[cross_alive].mean(), rel=1e-9)
    assert summary["high_cross_points"] == int((np.abs(cov[cross]) >= 0.2).sum()) > 0
    within = ~cross & ~np.eye(12, dtype=bool)
    assert summary["within_mean_abs_cov"] == pytest.approx(np.abs(cov[within]).mean(), rel=1e-9)


# ------------------------------------------------------------------ memory: 5 tables of 200k x 16
class FiveTables(torch.nn.Module):
    embedding_table_domains = None  # the model contract's hook: every table shared

    def __init__(self, rows=200_000, dim=16, tables=5):
        super().__init__()
        feature_map = SimpleNamespace(features={"item_id": {"type": "categorical", "vocab_size": rows}})
        self.embedding = MultiEmbedding(feature_map, dim, tables)


def test_table_analysis_never_holds_a_second_copy_of_a_table():
    torch.manual_seed(0)
    model = FiveTables()
    weight = model.embedding.embedding.embedding_layer.embedding_layers["item_id"].weight
    assert tuple(weight.shape) == (200_000, 80)
    table_bytes = 200_000 * 16 * 4
    counts = np.random.default_rng(0).zipf(1.5, size=200_000) % 1000
    frequencies = {"item_id": {"all": counts}}
    assert len(embedding_tables(model)) == 5
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = table_information(model, frequencies, groups=5, spectra_fields=("item_id",))
        _, peak = tracemalloc.get_traced_memory()
        # the measurement sees numpy buffers: a naive SVD of one table copy exceeds the bound
        tracemalloc.reset_peak()
        naive = np.linalg.svd(np.array(weight.detach().numpy()[:, 16:32]), compute_uv=False)
        _, naive_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < table_bytes, f"analysis peaked at {peak / 1e6:.1f} MB, a table is {table_bytes / 1e6:.1f} MB"
    assert naive_peak >= table_bytes
    assert len(result) == 5 and all(len(t["ia_groups"]) == 5 for t in result)
    np.testing.assert_allclose(result[1]["sigma"], naive, rtol=1e-5)
    assert result[1]["ia"] == pytest.approx(information_abundance(naive), rel=1e-6)


# ------------------------------------------------------------------ model adapters
def test_single_domain_expert_output_is_the_input_of_each_logit_layer(tiny, tiny_batch):
    model = build_model(tiny, "SingleDomain_test")
    model.eval()
    X = model.get_inputs(tiny_batch)
    with torch.no_grad():
        O, bound = expert_outputs(model, X)
        logit, _ = model.logits(X, model.domain_of(X))
    assert O.shape[0] == model.num_domains and bound == list(range(model.num_domains))
    domain = model.domain_of(X)
    for s, dnn in enumerate(model.dnns):
        rows = domain == s
        torch.testing.assert_close(dnn.output(O[s][rows]).view(-1), logit[rows])


def test_star_experts_are_each_domains_network_on_every_row(tiny, tiny_batch):
    model = build_model(tiny, "STAR_test")
    model.eval()
    X = model.get_inputs(tiny_batch)
    domain = model.domain_of(X)
    with torch.no_grad():
        O, bound = expert_outputs(model, X)
        main = model.main_logit(model.embedding(X)[0], domain)
        weight, bias = model.star_output.effective()  # K x H x 1, K x 1
    assert O.shape == (model.num_domains, X["user_id"].shape[0], 8) and bound == list(range(model.num_domains))
    for s in range(model.num_domains):  # a row's own domain's expert is the input of its star output layer
        rows = domain == s
        torch.testing.assert_close((O[s][rows] @ weight[s] + bias[s]).view(-1), main[rows])
    with torch.no_grad():  # expert s uses domain s's leaf weights only
        model.star_layers[0].domain_weight[1].mul_(1.5)
        changed, _ = expert_outputs(model, X)
    assert torch.equal(changed[0], O[0]) and not torch.allclose(changed[1], O[1])


def test_pepnet_experts_are_the_gated_tower_hidden_outputs(tiny, tiny_batch):
    from mdl_bench.model_zoo.layers import gather_domain

    model = build_model(tiny, "PEPNet_test")
    model.eval()
    X = model.get_inputs(tiny_batch)
    domain = model.domain_of(X)
    with torch.no_grad():
        O, bound = expert_outputs(model, X)
        logit, _ = model.logits(X, domain)
        from_experts = gather_domain(model.tower_output(O).squeeze(-1), domain)
    assert O.shape == (model.num_domains, X["user_id"].shape[0], 8) and bound == list(range(model.num_domains))
    torch.testing.assert_close(from_experts, logit)
    assert build_model(tiny, "PEPNet_test", tower_hidden_units=[]).expert_outputs_for_analysis(X) is None


def test_probe_reads_model_hooks_not_class_names(tiny):
    import inspect

    from mdl_bench.benchmark.measure import probe
    from mdl_bench.model_zoo import registry

    source = inspect.getsource(probe)
    assert not [name for name in registry() if f'"{name}"' in source]
    model = build_model(tiny, "MMoE_test")
    assert table_domains(model, "embedding", 1) == [None]  # the base class's default: shared

    class OwnTable(type(model)):  # a model that declares its one table as domain 3's
        embedding_table_domains = [3]

    model.__class__ = OwnTable
    assert table_domains(model, "embedding", 1) == [3]


@pytest.mark.parametrize("expid, overrides", [("SDEM_test", {}), ("SingleDomain_test", {}),
                                               ("ME_PLE_test", {"num_levels": 1})])
def test_domain_tables_learn_only_from_their_domain(tiny, tiny_batch, expid, overrides):
    # (ME-PLE with two levels lets its level-1 shared gate mix every domain's experts, so only its CGC form,
    # one level, keeps table s to domain s's rows; the binding is the same at any depth)
    model = build_model(tiny, expid, **overrides)
    domains = table_domains(model, "embedding", model.embedding.num_tables)
    X = model.get_inputs(tiny_batch)
    domain = model.domain_of(X)
    rows = domain == 3
    X3 = {k: v[rows] for k, v in X.items()}
    model.train()
    logit, _ = model.logits(X3, domain[rows])
    logit.sum().backward()
    refs = [r for r in embedding_tables(model, ["item_id"]) if r.module == "embedding"]
    assert [r.domain for r in refs] == domains
    for ref in refs:  # each table's own columns (a SeparateTables' table has a weight of its own)
        grad = ref.weight.grad[:, ref.columns].abs().sum() if ref.weight.grad is not None else torch.zeros(())
        assert (grad > 0) == (ref.domain in (3, None)), (ref.index, ref.domain)


def test_shared_tables_by_default(tiny):
    model = build_model(tiny, "Crocodile_test")
    refs = embedding_tables(model, ["item_id"])
    assert [(r.module, r.index, r.domain) for r in refs] == [("embedding", i, None) for i in range(5)] + [
        ("prior_embedding", 0, None)]


# ------------------------------------------------------------------ runs, the recorder and the command
@pytest.fixture(scope="module")
def tiny_runs(tiny, tmp_path_factory):
    """SingleDomain_test and Crocodile_test trained on the tiny data (Crocodile with the IA recorder)."""
    from mdl_bench.benchmark.runner import run_expid

    root = tmp_path_factory.mktemp("analysis_runs")
    common = {"verbose": 0, "model_root": str(root), "epochs": 2}
    sd = run_expid("SingleDomain_test", overrides=common, quiet=True)
    # no early stop: a stop at a mid-epoch evaluation would end an epoch without its end-of-epoch snapshot
    recorded = {**common, "record_ia": True, "early_stop_patience": 100}
    croc = run_expid("Crocodile_test", overrides=recorded, quiet=True)
    # its twin without CovLoss: same structure and seed (its own folder: the checkpoint is named by the expid)
    twin = run_expid("Crocodile_test", overrides={**recorded, "aux_loss": "none",
                                                  "model_root": str(root / "no_cov")}, quiet=True)
    return SimpleNamespace(sd=sd, croc=croc, twin=twin)


def test_ia_recorder_writes_a_snapshot_per_epoch(tiny_runs):
    from mdl_bench.benchmark.measure.epochs import read_ia_epochs

    record = read_ia_epochs(tiny_runs.croc.checkpoint)
    assert [s["epoch"] for s in record["snapshots"]] == list(range(tiny_runs.croc.epochs_run + 1))
    last = record["snapshots"][-1]
    item_tables = [t for t in last["tables"] if t["field"] == "item_id" and t["module"] == "embedding"]
    assert len(item_tables) == 5 and all(len(t["ia_groups"]) == 5 for t in item_tables)
    assert len(last["experts"]) == 5 and all(1.0 <= e["ia"] <= 8.0 for e in last["experts"])
    assert record["snapshots"][0]["tables"][0]["ia"] != last["tables"][0]["ia"]  # training moved the tables


def test_analyze_checkpoints_writes_numbers_and_figures(tiny_runs, tmp_path, capsys):
    from mdl_bench.benchmark.cli import main

    out = tmp_path / "out"
    rc = main(["analyze", "--checkpoint", tiny_runs.croc.checkpoint, "--single-domain", tiny_runs.sd.checkpoint,
               "--out", str(out), "--rows", "1500"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Crocodile_test" in printed and "fig1a_di_vs_ia.png" in printed
    report = json.loads((out / "analysis.json").read_text())
    run = report["runs"][0]
    di = run["diversity_index"]
    assert di["equation"] == 2 and len(di["per_pair"]) == 20 and 0.0 <= di["mean"] <= 1.0
    fixed = run["diversity_index_fixed"]
    assert fixed["rule"] == "fixed" and di["rule"] == "quantile" and 0.0 <= fixed["mean"] <= 1.0
    assert len(set(fixed["thresholds"]["tau_t"])) == 1 and len(set(di["thresholds"]["tau_t"])) == 5
    assert report["methods"][0]["di_fixed"] == pytest.approx(fixed["mean"])
    assert "DI(fix)" in printed and "fig1a_di_fixed_vs_ia.png" in report["figures"]
    assert sum(di["pair_sizes"].values()) > 0
    assert report["datasets"]["tiny_synth"]["rows"] == 1500
    tables = [t for t in run["tables"] if t["module"] == "embedding"]
    assert len(tables) == 5 * len(tiny_runs.croc.params["feature_cols"][0]["name"] +
                                  tiny_runs.croc.params["feature_cols"][1]["name"] +
                                  tiny_runs.croc.params["feature_cols"][2]["name"])
    assert all(1.0 <= t["ia"] <= 4.0 for t in tables if t["ia"] is not None)  # D = 4 in the test config
    assert np.array(run["experts"]["cov_blocks"]).shape == (5, 5)
    names = set(report["figures"])
    assert {"fig1a_di_vs_ia.png", "fig6_di_sorted.png", "fig5_spectra_user_id.png", "fig5_spectra_item_id.png",
            "fig7_cov_Crocodile_test.png", "fig2_ia_epochs_Crocodile_test.png"} <= names
    assert all((out / n).stat().st_size > 1000 for n in names)

    from mdl_bench.benchmark.analysis.html import figures_section

    section = figures_section(out)
    assert section.count("<figure>") == len(list(out.glob("*.png")))
    assert section.count("data:image/png;base64,") == len(names) and "Crocodile_test" in section
    assert figures_section(tmp_path / "nothing") == ""


def test_analyze_compare_prints_figure_7_ratios(tiny_runs, tmp_path, capsys):
    from mdl_bench.benchmark.cli import main

    out = tmp_path / "fig7"
    rc = main(["analyze", "--compare", tiny_runs.twin.checkpoint, tiny_runs.croc.checkpoint, "--out", str(out),
               "--rows", "800"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    print(printed)  # the table, for `pytest -s`
    assert "Figure 7: CovLoss between experts" in printed and "aux_loss: none -> cov" in printed
    report = json.loads((out / "fig7_compare.json").read_text())
    saved = np.load(out / "fig7_compare.npz")
    first, second = saved["cov_blocks_first"], saved["cov_blocks_second"]
    assert first.shape == (5, 5) and len(report["pairs"]) == 15 and report["rows"] == 800
    for row in report["pairs"]:  # each pair: the two CovLosses and their ratio, as printed
        p, q = (int(v) - 1 for v in row["pair"].split(","))
        assert row["first"] == pytest.approx(first[p, q]) and row["second"] == pytest.approx(second[p, q])
        assert row["ratio"] == pytest.approx(first[p, q] / second[p, q])
        line = next(x for x in printed.splitlines() if x.split()[:1] == [row["pair"]])
        assert float(line.split()[3]) == pytest.approx(row["ratio"], rel=5e-3)
    assert report["total"]["ratio"] == pytest.approx(covloss_total(first) / covloss_total(second))
    assert report["dimensions"]["first"]["high_cross_points"] > 0  # A's 99th percentile: ~1 % of the entries
    assert (out / "fig7_compare.png").stat().st_size > 1000
    # a run with other experts, or of another model, is no twin
    rc = main(["analyze", "--compare", tiny_runs.sd.checkpoint, tiny_runs.croc.checkpoint, "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "same model" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["analyze", "--compare", "x.model", "7"], "x.model is neither a checkpoint file nor a run id"),
    (["analyze", "--compare", "1", "2", "--expid", "Crocodile_test"], "--expid, --set and --single-domain do not"),
    (["analyze"], "exactly one of --suite NAME, --run RUN_ID, --checkpoint PATH or --compare A B"),
    (["analyze", "--checkpoint", "/nonexistent/x.model"], "checkpoint /nonexistent/x.model does not exist"),
    (["analyze", "--checkpoint", "X", "--tau-top", "0.2", "--tau-bottom", "0.5"], "0 <= --tau-bottom < --tau-top"),
])
def test_analyze_bad_input_is_one_line(argv, message, capsys):
    from mdl_bench.benchmark.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_analyze_single_domain_must_be_a_single_domain_run(tiny_runs, capsys):
    from mdl_bench.benchmark.cli import main

    rc = main(["analyze", "--checkpoint", tiny_runs.croc.checkpoint, "--single-domain", tiny_runs.croc.checkpoint])
    assert rc == 2 and "is a Crocodile run, not SingleDomain" in capsys.readouterr().err


def test_analyze_a_suite_from_the_store(tiny, tmp_path, capsys):
    from mdl_bench.benchmark.analysis.store_bridge import suite_analysis_dir
    from mdl_bench.benchmark.cli import main
    from mdl_bench.benchmark.suite import load_suite, run_suite

    suite_file = tmp_path / "mini.yaml"
    suite_file.write_text(
        "name: mini\nseeds: [1]\nstore: results.sqlite\noverrides: {epochs: 1, record_ia: true}\n"
        "expids:\n  - SingleDomain_test\n  - {expid: Crocodile_test, label: Croc}\n"
        "  - {expid: Crocodile_test, label: CrocB, overrides: {aux_loss: none}}\n")
    outcome = run_suite(load_suite(str(suite_file)), out=lambda *a: None, progress_stream=open("/dev/null", "w"))
    assert len(outcome.stored_now) == 3 and not outcome.failed
    rc = main(["analyze", "--suite", str(suite_file), "--rows", "800"])
    printed = capsys.readouterr().out
    assert rc == 0, printed
    out = suite_analysis_dir(None, str(suite_file))
    assert out == tmp_path / "analysis" / "mini"
    report = json.loads((out / "analysis.json").read_text())
    assert [m["label"] for m in report["methods"]] == ["Croc", "CrocB"]  # the suite's labels; SingleDomain: D(i,j)
    assert report["datasets"]["tiny_synth"]["single_domain"]["label"] == "Single Domain"
    assert all(m["di"] is not None and m["ia"] is not None for m in report["methods"])
    assert all(r["run_id"] is not None and r["ia_epochs"] for r in report["runs"])
    assert {"fig2_ia_epochs_Croc.png", "fig7_cov_Croc.png", "fig6_di_sorted.png"} <= set(report["figures"])
    assert "Croc" in printed and "fig1a_di_vs_ia.png" in printed
    # figure 1a beside the paper: the paper's Crocodile gAUC (table 2) and this run's test gAUC from the store
    row = next(r for r in report["figure_1a"] if r["label"] == "Croc")
    assert row["paper_gauc"] == 0.66373 and row["gauc"] == pytest.approx(
        next(r["test"]["gAUC"] for r in report["runs"] if r["label"] == "Croc"))
    assert 0.0 < row["gauc"] < 1.0 and "Figure 1a beside the paper" in printed
    # the share of the loss that the auxiliary term is: Croc has CovLoss, CrocB none
    shares = {m["label"]: m["aux_share"] for m in report["methods"]}
    assert 0.0 < shares["Croc"] < 1.0 and shares["CrocB"] is None and "% of the loss" in printed
    # the suite's HTML leaderboard shows the figures, inlined
    page = tmp_path / "board.html"
    assert main(["leaderboard", "--suite", str(suite_file), "--format", "html", "--out", str(page)]) == 0
    text = page.read_text()
    assert "Analysis: Diversity Index and Information Abundance" in text
    assert all(f"alt='{name}'" in text for name in report["figures"])
    assert text.count("data:image/png;base64,") >= len(report["figures"])
    rc = main(["analyze", "--run", "99", "--store", str(tmp_path / "results.sqlite")])
    assert rc == 2 and "no run 99" in capsys.readouterr().err
    # figure 7 from two stored runs, by their run ids: the twin without CovLoss first
    ids = {r["label"]: r["run_id"] for r in report["runs"]}
    store = str(tmp_path / "results.sqlite")
    rc = main(["analyze", "--compare", ids["CrocB"], ids["Croc"], "--store", store, "--rows", "500",
               "--out", str(tmp_path / "fig7")])
    printed = capsys.readouterr().out
    assert rc == 0 and f"A = Crocodile_test (run {ids['CrocB']}" in printed and "sum p>=q" in printed


@pytest.mark.parametrize("weighting", ["domain", "batch"])
def test_loss_terms_are_the_trained_weights_bce_and_weighted_aux_loss(tiny, tiny_batch, weighting):
    """The auxiliary term's share of the loss (is CovLoss inert or dominant?): bce and alpha * CovLoss of the
    weights in evaluation mode, each computed again by hand; a model without an auxiliary loss has none."""
    from mdl_bench.benchmark.measure.probe import loss_terms

    model = build_model(tiny, "Crocodile_test", cov_alpha=0.05, cov_sample_rows=0, loss_weighting=weighting)
    terms = loss_terms(model, [tiny_batch])
    assert not model.training and all(not m.training for m in model.modules())
    X = model.get_inputs(tiny_batch)
    domain = model.domain_of(X)
    with torch.no_grad():
        O, emb = model.expert_outputs(X)
        weights = model._gate_weights(X, emb, domain)
        logit, _ = model.logits(X, domain)
        cov = 0.05 * model.cov_loss(O, weights)
        labels = model.get_labels(tiny_batch)
        bce = (model.domain_bce(logit, labels, domain) if weighting == "domain" else
               torch.nn.functional.binary_cross_entropy_with_logits(logit, labels.view(-1)))
    assert terms["cov"] == pytest.approx(float(cov), rel=1e-5)
    assert terms["bce"] == pytest.approx(float(bce), rel=1e-5)
    assert loss_terms(build_model(tiny, "SharedBottom_test"), [tiny_batch]) is None


def test_a_twin_without_the_aux_loss_loads_into_a_model_with_it(tiny, tmp_path):
    """How big a loss is on trained experts: a checkpoint of the no-aux twin loads into the config with the loss
    (only the loss's own weights, Trans5's maps, stay as built); anything else that does not fit is refused."""
    from mdl_bench.benchmark.measure.probe import load_model
    from mdl_bench.benchmark.runner import resolve
    from mdl_bench.kernel.errors import UserError

    base = build_model(tiny, "Crocodile_test", aux_loss="none")
    path = str(tmp_path / "base.model")
    base.save_weights(path)
    params = resolve("Crocodile_test", None, {"aux_loss": "trans5", "aux_alpha": 1.0})[0]
    model = load_model(params, path)
    for name, tensor in base.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert any(k.startswith("aux_loss_fn.") for k in model.state_dict())
    wider = resolve("Crocodile_test", None, {"expert_hidden_units": [16, 6]})[0]
    with pytest.raises(UserError, match="does not fit model Crocodile"):
        load_model(wider, path)
    other = resolve("SharedBottom_test", None, {})[0]
    with pytest.raises(UserError, match="does not fit model SharedBottom"):
        load_model(other, path)

"""The synthetic generator: determinism, long tail, conflicting domain, and the stored true probability."""
import hashlib

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mdl_bench.benchmark.data import synth
from mdl_bench.benchmark.errors import UserError

SMALL = dict(n_train=3000, n_valid=500, n_test=500, n_users=200, n_items=400, n_authors=50)


def digest(folder):
    return {s: hashlib.sha256((folder / f"{s}.csv").read_bytes()).hexdigest() for s in ("train", "valid", "test")}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    spec = synth.make_spec("kuairand_like", **SMALL)
    synth.write_raw(spec, tmp_path / "a")
    synth.write_raw(spec, tmp_path / "b")
    synth.write_raw(synth.make_spec("kuairand_like", **SMALL, seed=99), tmp_path / "c")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")["train"] != digest(tmp_path / "c")["train"]


@pytest.mark.parametrize("preset,ratio", [("kuairand_like", 43), ("aliccp_like", 82)])
def test_presets_have_long_tail_and_a_conflicting_domain(preset, ratio):
    spec = synth.make_spec(preset)
    sizes = np.asarray(spec.domain_sizes)
    assert sizes.max() / sizes.min() == pytest.approx(ratio, rel=0.05)
    assert min(spec.domain_rho) < 0 < max(spec.domain_rho)
    cols = synth.generate(synth.make_spec(preset, n_train=60000, n_valid=1, n_test=1))
    counts = np.array([(cols["domain"] == d).sum() for d in spec.domains])
    assert counts.max() / counts.min() == pytest.approx(ratio, rel=0.25)


def test_zipf_ids_and_noise_fields():
    cols = synth.generate(synth.make_spec("kuairand_like", n_train=50000, n_valid=1, n_test=1))
    counts = np.sort(np.bincount(cols["item_id"]))[::-1]
    assert counts[0] > 50 * np.median(counts[counts > 0])  # heavy head, long tail
    # a pure-noise field carries no information about the label
    y = cols["click"]
    rates = [y[cols["noise_b"] == v].mean() for v in range(10)]
    assert max(rates) - min(rates) < 0.05


def test_stored_probability_is_the_oracle():
    spec = synth.make_spec("kuairand_like", n_train=80000, n_valid=1, n_test=1)
    cols = synth.generate(spec)
    y, p = cols["click"], cols["true_prob"]
    assert 0 < p.min() and p.max() < 1
    # labels are Bernoulli(p): per domain, the click rate equals the mean probability within 4 standard errors
    for d in spec.domains:
        m = cols["domain"] == d
        se = np.sqrt((p[m] * (1 - p[m])).sum()) / m.sum()
        assert abs(y[m].mean() - p[m].mean()) < 4 * se
    # the oracle AUC reported by the package is the AUC of the stored probability
    from mdl_bench.benchmark.metrics import auc_score
    assert auc_score(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    assert roc_auc_score(y, p) > 0.7


def test_bad_spec_is_a_one_line_error():
    with pytest.raises(UserError, match="unknown synthetic preset 'kuairand'.*did you mean"):
        synth.make_spec("kuairand")
    with pytest.raises(UserError, match="unknown synthetic-data option 'n_trian'.*n_train"):
        synth.make_spec("kuairand_like", n_trian=5)
    with pytest.raises(UserError, match="domain_rho"):
        synth.make_spec("kuairand_like", domain_rho=[0.5, 0.5])


# ------------------------------------------------------------------ kuairand_like is frozen (issue 16)
def rows_digest(cols) -> str:
    """SHA-256 over every generated column (name, dtype, bytes), in :data:`synth.COLUMNS` order."""
    h = hashlib.sha256()
    for name in synth.COLUMNS:
        values = np.ascontiguousarray(cols[name])
        h.update(name.encode())
        h.update(str(values.dtype).encode())
        h.update(values.tobytes())
    return h.hexdigest()


# Computed on the generator before the conflict_like preset was added (commit c6676c9): the default data and
# the tiny test data must keep their rows, and their raw-file fingerprints (cached files stay valid).
FROZEN = {
    "default": ({}, "295c6f513c07082f7d9f52eeb3a1ed340787d84ecafeac4af537e71b7626020f", "91697c7d9f6a32a7"),
    "tiny_synth": (dict(seed=7, n_train=6000, n_valid=2000, n_test=2000, n_users=300, n_items=600, n_authors=100,
                        domain_sizes=[2.41, 7.76, 2.0, 1.5, 1.2]),
                   "5c6f6c241e981b5d81693516150da836c852098f23091969060761f9296d5696", "c8aa3e9145fcd327"),
}


@pytest.mark.parametrize("name", sorted(FROZEN))
def test_kuairand_like_rows_and_fingerprint_are_unchanged(name):
    options, rows, fingerprint = FROZEN[name]
    spec = synth.make_spec("kuairand_like", **options)
    assert rows_digest(synth.generate(spec)) == rows
    assert spec.fingerprint() == fingerprint

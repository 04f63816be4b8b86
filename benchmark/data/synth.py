"""Seeded synthetic multi-domain CTR data with a known click probability.

Real multi-domain logs (KuaiRand, AliCCP) cannot be shipped, so the default benchmark runs on data drawn
from a generative model that has the properties the paper's argument rests on:

* long-tailed domain sizes (``kuairand_like``: 5 domains, largest/smallest ~43x; ``aliccp_like``: 3 domains,
  ~82x; ``conflict_like``: 5 domains, 40x), with the domain values of the real data (KuaiRand ``tab``
  0/1/2/4/6, AliCCP field 301 = 1/2/3);
* user and item ids drawn with Zipf frequencies, so most ids are rare;
* a user taste shared across domains plus a domain-specific part, mixed per domain with weight ``rho_d``
  (MMoE's synthetic-task construction); one domain has ``rho_d < 0``, i.e. a taste that conflicts with the
  others;
* side features that are noisy views of the latent factors, and pure-noise fields;
* the true click probability, stored as a meta column (never a model input) so that the oracle AUC/gAUC of
  every domain is known.

Generative model, for a row with domain ``d``, user ``u`` (latent cluster ``cu``) and item ``i`` (cluster ``ci``)::

    A_d    = rho_d * A_shared + sqrt(1 - rho_d^2) * A_spec_d            (C_u x C_i affinity, entries ~ N(0, 1))
    logit  = offset_d + affinity_scale * A_d[cu, ci]
             + b_u + b_i + id_scale * <p_u, v_i> + hour_d[hour]
    click ~ Bernoulli(sigmoid(logit))

In ``kuairand_like`` and ``aliccp_like`` the id-level interaction ``<p_u, v_i>`` is the same in every domain, so
the domain-specific taste lives only in the cluster affinity ``A_d``. ``conflict_like`` (option ``id_rho``) also
gives every domain its own user and item factors, mixed with the shared ones::

    p_u^d = sgn(r_d) sqrt|r_d| p_u + sqrt(1 - |r_d|) q_u^d,   v_i^d = sqrt|r_d| v_i + sqrt(1 - |r_d|) w_i^d
    logit uses id_scale * <p_u^d, v_i^d>                        (r = id_rho; q, w ~ N(0, I/latent_dim))

so that, over (user, item) pairs, ``corr(<p^d, v^d>, <p, v>) = r_d`` and ``corr(<p^d, v^d>, <p^e, v^e>) = r_d r_e``
- the same correlation structure as ``A_d`` (mixing both factors by ``r_d`` itself would give ``r_d^2`` and lose
the sign of a conflicting domain). The domain-specific factors come from a second random stream (seeded by
``(seed, 1)``), so the draws of the presets without ``id_rho`` are untouched. Two more options make regimes
sweepable: ``size_skew`` (domain sizes become a geometric series whose largest/smallest ratio is ``size_skew``,
in the size order of ``domain_sizes``) and ``small_rho`` (``domain_rho`` and ``id_rho`` of the
``n_small_domains`` smallest domains).

Everything is drawn from one ``numpy.random.Generator(PCG64(seed))`` in a fixed order and written with fixed
float formatting, so the same spec gives the same bytes.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import schema
from mdl_bench.kernel.errors import UserError, close_matches
from mdl_bench.kernel.paths import pid_alive

SCHEMA_VERSION = 1  # bump when the generative model changes, so cached raw files are regenerated
ID_STREAM = 1  # second random stream (seed, ID_STREAM): the domain-specific id factors of ``id_rho``
# Options added after schema 1: left out of the fingerprint while at their defaults, so that the
# cached raw files of every earlier spec keep their fingerprint (their rows are unchanged).
LATER_OPTIONS = ("id_rho", "size_skew", "small_rho", "n_small_domains")

USER_FIELDS = ["user_id", "user_segment", "user_age", "user_gender", "user_activity", "user_city"]
ITEM_FIELDS = ["item_id", "item_category", "item_author", "item_duration", "item_age"]
CONTEXT_FIELDS = ["domain", "hour"]
NOISE_FIELDS = ["noise_a", "noise_b", "noise_c"]
COLUMNS = USER_FIELDS + ITEM_FIELDS + CONTEXT_FIELDS + NOISE_FIELDS + ["click", "true_prob"]


@dataclass(frozen=True)
class SynthSpec:
    """All knobs of the generator. Presets fill these; any field can be overridden from config."""

    domains: tuple = (0, 1, 2, 4, 6)
    domain_sizes: tuple = (2.41, 7.76, 0.90, 0.40, 0.18)  # relative row counts
    domain_rho: tuple = (0.8, 0.9, 0.6, -0.6, 0.7)  # correlation of each domain's taste with the shared one
    domain_offset: tuple = (-0.6, -0.9, -0.4, -1.0, -0.7)  # per-domain base logit
    n_train: int = 400_000
    n_valid: int = 100_000
    n_test: int = 300_000
    n_users: int = 2_000
    n_items: int = 20_000
    n_authors: int = 3_000
    user_zipf: float = 1.05
    item_zipf: float = 1.1
    user_clusters: int = 8
    item_clusters: int = 16
    latent_dim: int = 4
    affinity_scale: float = 1.2
    id_scale: float = 0.15
    user_bias_std: float = 0.25
    item_bias_std: float = 0.25
    hour_effect_std: float = 0.2
    side_accuracy: float = 0.95  # probability that a side feature shows the true latent cluster
    seed: int = 2024
    id_rho: tuple = ()  # per domain: correlation of its id-level interaction with the shared one; () = shared
    size_skew: float = 0.0  # > 0: geometric domain sizes with largest/smallest = size_skew (0: domain_sizes)
    small_rho: float | None = None  # domain_rho (and id_rho) of the n_small_domains smallest domains
    n_small_domains: int = 2

    def __post_init__(self):
        k = len(self.domains)
        for name in ("domain_sizes", "domain_rho", "domain_offset"):
            if len(getattr(self, name)) != k:
                raise UserError(f"synthetic spec: `{name}` has {len(getattr(self, name))} entries but `domains` "
                                f"has {k}; give one entry per domain")
        if self.id_rho and len(self.id_rho) != k:
            raise UserError(f"synthetic spec: `id_rho` has {len(self.id_rho)} entries but `domains` has {k}; give "
                            f"one entry per domain (or none: one id-level interaction shared by all domains)")
        if any(abs(r) > 1 for r in self.domain_rho):
            raise UserError("synthetic spec: every `domain_rho` must lie in [-1, 1]")
        if any(abs(r) > 1 for r in self.id_rho):
            raise UserError("synthetic spec: every `id_rho` must lie in [-1, 1]")
        if min(self.n_train, self.n_valid, self.n_test) <= 0:
            raise UserError("synthetic spec: n_train, n_valid and n_test must be positive")
        if not (self.size_skew == 0 or self.size_skew >= 1):
            raise UserError(f"synthetic spec: `size_skew` is the largest/smallest domain size ratio, >= 1 (or 0 to "
                            f"keep `domain_sizes`), got {self.size_skew}")
        if self.small_rho is None and self.n_small_domains != SynthSpec.n_small_domains:
            raise UserError(f"synthetic spec: `n_small_domains` ({self.n_small_domains}) has no effect without "
                            f"`small_rho`; set small_rho (the rho of those domains) or drop n_small_domains")
        if self.small_rho is not None:
            if abs(self.small_rho) > 1:
                raise UserError(f"synthetic spec: `small_rho` must lie in [-1, 1], got {self.small_rho}")
            if not 1 <= self.n_small_domains < k:
                raise UserError(f"synthetic spec: `n_small_domains` must be between 1 and {k - 1} (the number of "
                                f"domains less one), got {self.n_small_domains}")

    def fingerprint(self) -> str:
        values = dataclasses.asdict(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in LATER_OPTIONS:
            if values[name] == defaults[name]:
                del values[name]
        payload = json.dumps({"schema": SCHEMA_VERSION, **values}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def sizes(self) -> np.ndarray:
        """Relative domain sizes (``K``): ``domain_sizes``, or with ``size_skew = s > 0`` the geometric series
        ``s^(-r/(K-1))`` for the domain of size rank ``r`` (0 = largest in ``domain_sizes``; ties keep order)."""
        given = np.asarray(self.domain_sizes, dtype=np.float64)
        if not self.size_skew or len(given) < 2:
            return given
        order = np.argsort(-given, kind="stable")
        out = np.empty_like(given)
        out[order] = float(self.size_skew) ** (-np.arange(len(given)) / (len(given) - 1))
        return out

    def small_domains(self) -> np.ndarray:
        """Indices of the ``n_small_domains`` smallest domains (by :meth:`sizes`; ties: the later one smaller)."""
        order = np.argsort(-self.sizes(), kind="stable")
        return np.sort(order[len(order) - self.n_small_domains:])

    def rho(self) -> np.ndarray:
        """``K``: the cluster-level rho of each domain, ``small_rho`` applied."""
        rho = np.asarray(self.domain_rho, dtype=np.float64).copy()
        if self.small_rho is not None:
            rho[self.small_domains()] = self.small_rho
        return rho

    def id_level_rho(self) -> np.ndarray | None:
        """``K``: the id-level rho of each domain (``small_rho`` applied), or ``None`` for a shared ``<p_u, v_i>``."""
        if not self.id_rho:
            return None
        rho = np.asarray(self.id_rho, dtype=np.float64).copy()
        if self.small_rho is not None:
            rho[self.small_domains()] = self.small_rho
        return rho


PRESETS: dict[str, dict] = {
    # KuaiRand-1K's five largest tabs: 2.41M / 7.76M / 0.90M / 0.40M / 0.18M rows (43x); tab 4 conflicts.
    "kuairand_like": dict(),
    # AliCCP's field 301: 32.2M / 0.64M / 52.4M rows (82x), low CTR; domain 2 (the small one) conflicts.
    "aliccp_like": dict(
        domains=(1, 2, 3),
        domain_sizes=(32.2, 0.64, 52.4),
        domain_rho=(0.85, -0.5, 0.9),
        domain_offset=(-2.6, -2.4, -2.8),
        n_train=500_000, n_valid=100_000, n_test=300_000,
        n_users=20_000, n_items=40_000,
    ),
    # Domain-specific interest at the id level too: each domain's user and item factors are mixed
    # with the shared ones by id_rho; the id interaction carries most of the signal (std ~1.0 logit vs ~0.6 for
    # the cluster affinity). Sizes 40x, from 54 % down to 1.4 % of the rows; the smallest domain conflicts.
    "conflict_like": dict(
        domains=(0, 1, 2, 3, 4),
        domain_sizes=(10.0, 4.0, 1.6, 0.6, 0.25),
        domain_rho=(0.9, 0.8, 0.6, 0.4, -0.5),
        id_rho=(0.9, 0.8, 0.6, 0.4, -0.5),
        domain_offset=(-0.8, -0.6, -0.9, -0.5, -0.7),
        n_items=5_000,
        affinity_scale=0.6,
        id_scale=2.0,
    ),
}


# Ranges of the generator's options (their types are SynthSpec's annotations).
OPTION_RANGES = {
    **dict.fromkeys(("n_train", "n_valid", "n_test", "n_users", "n_items", "n_authors", "user_clusters",
                     "item_clusters", "latent_dim"), schema.POSITIVE_INT),
    **dict.fromkeys(("user_zipf", "item_zipf"), schema.POSITIVE),
    **dict.fromkeys(("affinity_scale", "id_scale", "user_bias_std", "item_bias_std", "hour_effect_std",
                     "domain_sizes"), schema.NON_NEGATIVE),
    "side_accuracy": schema.FRACTION, "domain_rho": schema.Range(ge=-1, le=1),
    "seed": schema.Range(ge=0, le=2**32 - 1),
}


def _typed_options(overrides: dict) -> dict:
    """Options checked against SynthSpec's field types and :data:`OPTION_RANGES` (``"1e3"`` -> 1000)."""
    import typing

    hints = typing.get_type_hints(SynthSpec)
    numbers = {"domains": tuple, "domain_sizes": tuple[float, ...], "domain_rho": tuple[float, ...],
               "domain_offset": tuple[float, ...], "id_rho": tuple[float, ...]}
    return {key: schema.check_value(key, value, numbers.get(key, hints[key]), OPTION_RANGES.get(key), None,
                                    what="synthetic-data option") for key, value in overrides.items()}


def make_spec(preset: str = "kuairand_like", **overrides) -> SynthSpec:
    """Build a spec from a preset name plus overrides (unknown keys are a one-line error)."""
    if preset not in PRESETS:
        raise UserError(f"unknown synthetic preset {preset!r}{close_matches(preset, PRESETS)}; "
                        f"known presets: {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(SynthSpec)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise UserError(f"unknown synthetic-data option {bad[0]!r}{close_matches(bad[0], known)}; "
                        f"known options: {', '.join(sorted(known))}")
    values = {**PRESETS[preset], **_typed_options(overrides)}
    for key in ("domains", "domain_sizes", "domain_rho", "domain_offset", "id_rho"):
        if key in values:
            values[key] = tuple(values[key])
    return SynthSpec(**values)


def _zipf_sampler(rng: np.random.Generator, n_ids: int, exponent: float):
    """Ids 1..n_ids with P(rank r) ~ r^-exponent; ranks are shuffled so an id's number says nothing."""
    ranks = np.arange(1, n_ids + 1, dtype=np.float64)
    cdf = np.cumsum(ranks ** -exponent)
    cdf /= cdf[-1]
    ids_by_rank = rng.permutation(n_ids) + 1

    def sample(n: int) -> np.ndarray:
        rank = np.searchsorted(cdf, rng.random(n), side="right")
        return ids_by_rank[np.minimum(rank, n_ids - 1)]

    return sample, ids_by_rank


def _noisy_view(rng, truth: np.ndarray, n_values: int, accuracy: float) -> np.ndarray:
    """``truth`` with probability ``accuracy``, otherwise a uniformly random value."""
    keep = rng.random(truth.shape[0]) < accuracy
    return np.where(keep, truth, rng.integers(0, n_values, size=truth.shape[0]))


def domain_id_factors(spec: SynthSpec, u_latent: np.ndarray, i_latent: np.ndarray, id_rho: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Each domain's user and item factors, ``K x (U+1) x r`` and ``K x (I+1) x r`` (row 0 unused, zero).

    ``p^d = sgn(r_d) sqrt|r_d| p + sqrt(1-|r_d|) q^d`` and ``v^d = sqrt|r_d| v + sqrt(1-|r_d|) w^d`` with ``q^d``,
    ``w^d`` drawn like ``p``, ``v`` (``N(0, I/r)``) from the stream ``(seed, ID_STREAM)``; hence
    ``corr(<p^d, v^d>, <p, v>) = r_d`` over pairs. ``u_latent`` is ``(U+1) x r``, ``i_latent`` ``(I+1) x r``.
    """
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([spec.seed, ID_STREAM])))
    k, r = len(id_rho), u_latent.shape[1]
    q = rng.standard_normal((k,) + u_latent.shape) / np.sqrt(r)
    w = rng.standard_normal((k,) + i_latent.shape) / np.sqrt(r)
    q[:, 0] = 0.0
    w[:, 0] = 0.0
    size = np.sqrt(np.abs(id_rho))[:, None, None]
    rest = np.sqrt(1.0 - np.abs(id_rho))[:, None, None]
    p_dom = np.sign(id_rho)[:, None, None] * size * u_latent[None] + rest * q
    v_dom = size * i_latent[None] + rest * w
    return p_dom, v_dom


def generate(spec: SynthSpec) -> dict[str, np.ndarray]:
    """Draw all rows (train, valid, test in that order) as a dict of column arrays.

    Returns every column in :data:`COLUMNS` with ``len == n_train + n_valid + n_test``.
    """
    rng = np.random.Generator(np.random.PCG64(spec.seed))
    k = len(spec.domains)
    n = spec.n_train + spec.n_valid + spec.n_test
    U, I, Cu, Ci = spec.n_users, spec.n_items, spec.user_clusters, spec.item_clusters

    # ---- domain-level parameters
    rho = spec.rho()
    a_shared = rng.standard_normal((Cu, Ci))
    a_spec = rng.standard_normal((k, Cu, Ci))
    affinity = rho[:, None, None] * a_shared + np.sqrt(1.0 - rho ** 2)[:, None, None] * a_spec
    hour_effect = rng.standard_normal((k, 24)) * spec.hour_effect_std
    offset = np.asarray(spec.domain_offset, dtype=np.float64)

    # ---- users (index 0 unused so that arrays are indexed by id)
    sample_user, users_by_rank = _zipf_sampler(rng, U, spec.user_zipf)
    u_cluster = np.concatenate([[0], rng.integers(0, Cu, size=U)])
    u_bias = np.concatenate([[0.0], rng.standard_normal(U) * spec.user_bias_std])
    u_latent = np.vstack([np.zeros(spec.latent_dim), rng.standard_normal((U, spec.latent_dim))])
    u_latent /= np.sqrt(spec.latent_dim)
    u_segment = np.concatenate([[0], _noisy_view(rng, u_cluster[1:], Cu, spec.side_accuracy)])
    age_truth = (u_cluster[1:] * 7) // Cu
    u_age = np.concatenate([[0], np.clip(age_truth + rng.integers(-1, 2, size=U), 0, 6)])
    u_gender = np.concatenate([[0], (rng.random(U) < 0.3 + 0.4 * (u_cluster[1:] % 2)).astype(np.int64)])
    activity_rank = np.empty(U + 1, dtype=np.int64)
    activity_rank[users_by_rank] = np.arange(U)
    u_activity = np.minimum((np.log2(activity_rank + 1)).astype(np.int64), 9)
    u_city = np.concatenate([[0], rng.integers(0, 60, size=U)])  # pure noise at the user level

    # ---- items
    sample_item, _ = _zipf_sampler(rng, I, spec.item_zipf)
    sample_author, _ = _zipf_sampler(rng, spec.n_authors, 1.0)
    i_author = np.concatenate([[0], sample_author(I)])
    author_cluster = rng.integers(0, Ci, size=spec.n_authors + 1)
    author_bias = rng.standard_normal(spec.n_authors + 1) * spec.item_bias_std * 0.5
    i_cluster = np.concatenate([[0], _noisy_view(rng, author_cluster[i_author[1:]], Ci, 0.6)])
    i_bias = author_bias[i_author] + np.concatenate([[0.0], rng.standard_normal(I)]) * spec.item_bias_std
    i_latent = np.vstack([np.zeros(spec.latent_dim), rng.standard_normal((I, spec.latent_dim))])
    i_latent /= np.sqrt(spec.latent_dim)
    i_category = np.concatenate([[0], _noisy_view(rng, i_cluster[1:], Ci, spec.side_accuracy)])
    i_duration = np.concatenate([[0], np.clip(i_cluster[1:] % 8 + rng.integers(-1, 2, size=I), 0, 7)])
    i_age = np.concatenate([[0], rng.integers(0, 6, size=I)])  # pure noise at the item level

    # ---- rows
    sizes = spec.sizes()
    d_idx = rng.choice(k, size=n, p=sizes / sizes.sum())
    user = sample_user(n)
    item = sample_item(n)
    hour = rng.integers(0, 24, size=n)
    id_rho = spec.id_level_rho()
    if id_rho is None:
        interaction = np.einsum("nr,nr->n", u_latent[user], i_latent[item])
    else:
        p_dom, v_dom = domain_id_factors(spec, u_latent, i_latent, id_rho)
        interaction = np.einsum("nr,nr->n", p_dom[d_idx, user], v_dom[d_idx, item])
    logit = (offset[d_idx]
             + spec.affinity_scale * affinity[d_idx, u_cluster[user], i_cluster[item]]
             + u_bias[user] + i_bias[item]
             + spec.id_scale * interaction
             + hour_effect[d_idx, hour])
    prob = 1.0 / (1.0 + np.exp(-logit))
    click = (rng.random(n) < prob).astype(np.int64)
    domain_values = np.asarray(spec.domains)[d_idx]
    return {
        "user_id": user, "user_segment": u_segment[user], "user_age": u_age[user],
        "user_gender": u_gender[user], "user_activity": u_activity[user], "user_city": u_city[user],
        "item_id": item, "item_category": i_category[item], "item_author": i_author[item],
        "item_duration": i_duration[item], "item_age": i_age[item],
        "domain": domain_values, "hour": hour,
        "noise_a": rng.integers(0, 50, size=n), "noise_b": rng.integers(0, 10, size=n),
        "noise_c": rng.integers(0, 1000, size=n),
        "click": click, "true_prob": prob,
    }


def _remove_leftovers(out_dir: Path) -> None:
    """Remove ``<out>.tmp-<pid>-*`` folders of generators that were killed (their process is gone)."""
    pattern = re.compile(rf"^{re.escape(out_dir.name)}\.tmp-(\d+)-[a-z0-9_]{{8}}$")
    removed = []
    for entry in (out_dir.parent.iterdir() if out_dir.parent.is_dir() else []):
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not pid_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    if removed:
        print(f"Removed leftovers of a killed data generation in {out_dir.parent}: {', '.join(sorted(removed))}",
              file=sys.stderr)


def write_raw(spec: SynthSpec, out_dir: str | os.PathLike) -> dict:
    """Generate and write ``train.csv``, ``valid.csv``, ``test.csv`` and ``synth_meta.json`` into ``out_dir``.

    The files appear atomically: they are written into a sibling temporary folder that is renamed into
    place, so an interrupted run never leaves a half-written dataset behind. Returns the meta dict.
    """
    import polars as pl

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    cols = generate(spec)
    frame = pl.DataFrame({c: cols[c] for c in COLUMNS})
    bounds = {"train": (0, spec.n_train),
              "valid": (spec.n_train, spec.n_train + spec.n_valid),
              "test": (spec.n_train + spec.n_valid, spec.n_train + spec.n_valid + spec.n_test)}
    _remove_leftovers(out_dir)
    # the pid in the name tells a killed generator's folder from a live one
    tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        counts = {}
        for split, (lo, hi) in bounds.items():
            part = frame.slice(lo, hi - lo)
            part.write_csv(tmp / f"{split}.csv", float_precision=8)
            per_domain = part.group_by("domain").agg(pl.len().alias("rows"), pl.col("click").mean().alias("ctr"))
            counts[split] = {str(r["domain"]): {"rows": r["rows"], "ctr": round(r["ctr"], 6)}
                             for r in per_domain.sort("domain").iter_rows(named=True)}
        meta = {"generator": "mdl_bench.synth", "schema_version": SCHEMA_VERSION,
                "fingerprint": spec.fingerprint(), "spec": dataclasses.asdict(spec), "rows": counts,
                "bytes": {split: (tmp / f"{split}.csv").stat().st_size for split in bounds}}
        (tmp / "synth_meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return meta


def read_meta(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / "synth_meta.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def ensure_raw(spec: SynthSpec, out_dir: str | os.PathLike, log=None) -> bool:
    """Generate the raw files unless ``out_dir`` already holds this exact spec, each file with the rows its
    generator recorded. Returns True if generated. A file that is missing or does not hold its recorded rows (cut
    short, edited) is generated again (the generator is seeded: the same rows), saying so through ``log``."""
    meta = read_meta(out_dir)
    if meta is not None and meta.get("fingerprint") == spec.fingerprint():
        problem = raw_problem(meta, Path(out_dir))
        if problem is None:
            return False
        if log is not None:
            log(f"{problem}; generating the synthetic data again (seeded: the same rows)")
    write_raw(spec, out_dir)
    return True


def raw_problem(meta: dict, out_dir: Path) -> str | None:
    """Why the raw files in ``out_dir`` are not what ``meta`` recorded (a file missing, or with another number of
    rows or bytes), or ``None``."""
    for split, per_domain in (meta.get("rows") or {}).items():
        path = out_dir / f"{split}.csv"
        if not path.is_file():
            return f"raw file {path} is missing"
        recorded = (meta.get("bytes") or {}).get(split)
        if recorded is not None:
            if path.stat().st_size != recorded:
                return f"raw file {path} has {path.stat().st_size:,} bytes, its generator wrote {recorded:,}"
            continue
        rows = sum(v["rows"] for v in per_domain.values())  # files written before byte counts were recorded
        with open(path, "rb") as fh:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: fh.read(1 << 20), b"")) - 1
        if lines != rows:
            return f"raw file {path} has {lines:,} rows, its generator wrote {rows:,}"
    return None

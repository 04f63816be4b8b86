"""The board: which stored runs make each row of a suite's tables (one config hash, one code revision), and the
lift tables."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mdl_bench.kernel.errors import UserError, close_matches
from .stats import Evidence, column_stats, estimate, holm, mean_std

PAPER_GROUPS = ("Single Domain", "MTL (SE)", "MTL (ME)", "MDL", "Crocodile")
ORACLE_LABEL = "Oracle (true CTR)"  # synthetic data: the metrics of the generator's true probability

OUTDATED_MARK = "†"
CAP_MARK = "‡"  # a run whose best epoch is its last allowed one: early stopping never said it converged


@dataclass
class Row:
    variant: object
    run_ids: dict            # seed -> run_id
    values: dict             # column -> {seed: value}
    evidence: dict = field(default_factory=dict)  # column -> Evidence (values, test-split replicates, counts)
    code: str = ""           # the code fingerprint every run of the row was made by (never a mix)
    outdated: bool = False   # no run of the current code yet: the row shows the newest older revision
    capped: int = 0          # runs whose best epoch is the epoch cap (not shown to have converged)
    capacity: dict = field(default_factory=dict)  # embedding_parameters, dense_parameters, train_flops_per_row

    @property
    def label(self) -> str:
        return self.variant.label

    @property
    def shown_label(self) -> str:
        """The label with the marks of the row: :data:`OUTDATED_MARK` for runs of older code, :data:`CAP_MARK`
        when a run's best epoch is its last allowed one."""
        return self.label + (f" {OUTDATED_MARK}" if self.outdated else "") + (f" {CAP_MARK}" if self.capped else "")

    @property
    def group(self) -> str:
        return self.variant.group


@dataclass
class Table:
    dataset_id: str
    domains: list            # the domain names shown, then "Overall"
    metrics: list
    rows: list
    info_keys: list
    marks: dict = field(default_factory=dict)     # column -> ColumnStats (intervals, ranks, tie groups)
    reference: object = None                      # the Row every other row is compared with (None: no comparisons)
    oracle: dict = field(default_factory=dict)    # column -> metric of the data's true probability (synthetic)

    @property
    def columns(self) -> list[str]:
        return [column(m, d) for m in self.metrics for d in self.domains]


def column(metric: str, domain: str) -> str:
    return metric if domain == "Overall" else f"{metric}@{domain}"


@dataclass
class Lift:
    spec: dict
    table: Table
    base: Row
    rows: list               # (row, {metric: (mean, lift %, p)})


@dataclass
class Board:
    suite: object
    split: str
    tables: list
    lifts: list
    planned: int
    found: int
    store_path: Path
    std: bool
    digits: int
    missing: list = field(default_factory=list)
    command: str = ""        # the `mdl-bench run` line that fills the missing or outdated rows, as given

    @property
    def title(self) -> str:
        return self.suite.leaderboard.get("title") or f"Leaderboard: suite {self.suite.name}"


def build_board(suite, store=None, config_dir=None, metrics=None, split=None, std=None, digits=None,
                lift_base=None, extra_overrides: dict | None = None, reference: str | None = None) -> Board:
    """Collect the suite's runs from the store into tables (one per dataset), marks and lift tables."""
    from ..data.build import domain_names
    from ..store import Store
    from ..suite.plan import suite_command

    lb = suite.leaderboard
    metrics = list(metrics or lb["metrics"])
    from mdl_bench.model_zoo.core import metrics as metric_lib
    for metric in metrics:
        if metric not in metric_lib.BASE_METRICS:
            raise UserError(f"unknown metric {metric!r}{close_matches(metric, metric_lib.BASE_METRICS)}; known "
                            f"metrics: {', '.join(metric_lib.BASE_METRICS)}")
    split = split or lb["split"]
    plan = suite.plan(config_dir, extra_overrides, strict=False)
    db = Store(store or suite.store, create=False)
    try:
        stored = db.stored_keys()
        by_config = db.stored_by_config()
        wanted = {r.key: stored[r.key] for r in plan.runs if r.key in stored}
        rows_runs = {v.index: _row_runs(v, stored, by_config) for v in plan.variants}
        shown = {rid for _, ids, _ in rows_runs.values() for rid in ids.values()}
        values_of = db.metrics_of(shown)
        results_of = db.results_of(shown)
        capped_runs = {r["run_id"] for r in db.list_runs(shown) if _at_cap(r)}
    finally:
        db.close()
    datasets = list(dict.fromkeys(v.dataset_id for v in plan.variants))
    order = list(lb["group_order"]) or list(PAPER_GROUPS)
    tables = []
    for dataset in datasets:
        variants = [v for v in plan.variants if v.dataset_id == dataset]
        names = domain_names(variants[0].params)
        shown = names + ["Overall"] if lb["domains"] == "all" else [d for d in names + ["Overall"]
                                                                   if d in lb["domains"]]
        appearance = list(dict.fromkeys(v.group for v in variants))
        rank = {g: i for i, g in enumerate([g for g in order if g in appearance] +
                                           [g for g in appearance if g not in order])}
        variants.sort(key=lambda v: (rank[v.group], v.index))
        info_keys = list(dict.fromkeys(k for v in variants for k in v.entry.info))
        table = Table(dataset_id=dataset, domains=shown, metrics=metrics, rows=[], info_keys=info_keys)
        # the shown columns, then what the plots read besides (a plot may show a metric or domain the table does not)
        read = table.columns + sorted({column(m, spec["domain"]) for spec in lb["plots"] for m in spec["metrics"]}
                                      - set(table.columns))
        for v in variants:
            code, run_ids, outdated = rows_runs[v.index]
            values = {c: {s: values_of[r].get(split, {}).get(c, float("nan")) for s, r in run_ids.items()}
                      for c in read}
            evidence = {c: _evidence(c, values[c], run_ids, results_of, split) for c in read}
            table.rows.append(Row(variant=v, run_ids=run_ids, values=values, evidence=evidence, code=code,
                                  outdated=outdated, capped=sum(rid in capped_runs for rid in run_ids.values()),
                                  capacity=_capacity(run_ids, results_of)))
        table.reference = _reference_row(table, reference if reference is not None else lb.get("reference"))
        ref = None if table.reference is None else table.rows.index(table.reference)
        for c in table.columns:
            table.marks[c] = column_stats([row.evidence[c] for row in table.rows], c, ref)
        for row in table.rows:  # the data's oracle (same for every run of the dataset): a reference row
            for run_id in row.run_ids.values():
                oracle = values_of[run_id].get("oracle") or {}
                if oracle:
                    table.oracle = {c: oracle.get(c, float("nan")) for c in read}
                    break
            if table.oracle:
                break
        tables.append(table)
    lift_specs = list(lb["lift"])
    if lift_base:
        lift_specs = [{"base": lift_base, "metrics": metrics, "domain": "Overall", "title": None}]
    lifts = []
    for spec in lift_specs:
        for table in tables:
            lifts.append(_lift(spec, table, split, config_dir, suite, values_of, wanted))
    planned = len({r.key for r in plan.runs})
    missing = [r for r in plan.unique_runs() if r.key not in wanted]
    return Board(suite=suite, split=split, tables=tables, lifts=lifts, planned=planned, found=len(wanted),
                 store_path=_store_path(store or suite.store),
                 std=lb["std"] if std is None else std, digits=lb["digits"] if digits is None else digits,
                 missing=missing, command=suite_command(suite, "run", config_dir, store, extra_overrides))


def _capacity(run_ids: dict, results_of: dict) -> dict:
    """The row's capacity (every seed of one config has the same), from the first run that stored it; ``{}`` for
    runs made before capacities were stored."""
    for run_id in run_ids.values():
        capacity = (results_of.get(run_id) or {}).get("capacity")
        if capacity:
            return dict(capacity)
    return {}


def _evidence(col: str, values: dict, run_ids: dict, results_of: dict, split: str = "test") -> Evidence:
    """A cell's per-seed values with each run's test-split bootstrap replicates and the cell's counts (test
    split only: the validation split has none)."""
    from mdl_bench.model_zoo.core.bootstrap import decode

    domain = col.partition("@")[2] or "Overall"
    replicates, counts = {}, None
    if split != "test":
        return Evidence(values=values, replicates=replicates, counts=counts)
    for seed, run_id in run_ids.items():
        result = results_of.get(run_id) or {}
        cells = (result.get("test_bootstrap") or {}).get("cells") or {}
        if col in cells:
            replicates[seed] = decode(cells[col])
        counts = counts or (result.get("test_counts") or {}).get(domain)
    return Evidence(values=values, replicates=replicates, counts=counts)


def _reference_row(table: Table, ref) -> Row | None:
    """The row every other row is compared with: the suite's ``reference`` (a label or expid; ``none`` for no
    comparisons), by default the Shared Bottom row when the table has one."""
    if ref is None:
        hits = [r for r in table.rows if r.variant.model == "SharedBottom"]
        return hits[0] if hits else None
    if str(ref).lower() == "none":
        return None
    return find_row(table, str(ref), what="reference row")


def _at_cap(run: dict) -> bool:
    """Whether a stored run's best epoch is the last epoch it was allowed (``epochs``)."""
    best, cap = run.get("best_epoch"), run.get("epochs")
    return best is not None and cap is not None and int(best) >= int(cap)


def _row_runs(variant, stored: dict, by_config: dict) -> tuple[str, dict, bool]:
    """``(code, {seed: run_id}, outdated)`` of a row: its runs of the current code; when there are none yet, the
    runs of the newest older code revision (every seed from that one revision: a cell never mixes code)."""
    current = {s: stored[(variant.config_hash, s, variant.code)] for s in variant.seeds
               if (variant.config_hash, s, variant.code) in stored}
    if current:
        return variant.code, current, False
    older = [(t, code) for s in variant.seeds for _, code, t in by_config.get((variant.config_hash, s), [])]
    if not older:
        return variant.code, {}, False
    code = max(older)[1]
    runs = {s: rid for s in variant.seeds for rid, c, _ in by_config.get((variant.config_hash, s), []) if c == code}
    return code, runs, True


def _store_path(path):
    from ..store import store_path
    return store_path(path)


def find_row(table: Table, ref: str, what: str = "lift base") -> Row:
    """A row by its label, its entry's label (series), its expid or its model's display name."""
    for attr in ("label", "series", "expid", "display_name"):
        hits = [r for r in table.rows if getattr(r.variant, attr) == ref]
        if hits:
            return hits[0]
    known = [r.label for r in table.rows]
    raise UserError(f"{what} {ref!r}{close_matches(ref, known)} is not a row of the leaderboard; rows: "
                    f"{', '.join(known)} (or their expids)")


def _lift(spec: dict, table: Table, split, config_dir, suite, values_of, wanted) -> Lift:
    """Each row's mean and lift over the base row, with the combined (seeds + test split) p of the difference,
    Holm-adjusted over the rows of the table, per metric."""
    base = find_row(table, spec["base"])
    domain = spec["domain"]
    cells_of = {id(row): {} for row in table.rows}
    for metric in spec["metrics"]:
        col = column(metric, domain)
        raw = []
        for row in table.rows:
            ev, base_ev = row.evidence.get(col), base.evidence.get(col)
            if ev is None:  # a column the main table does not show: read it from the runs
                ev = Evidence({s: values_of[r].get(split, {}).get(col, float("nan")) for s, r in row.run_ids.items()})
                base_ev = Evidence({s: values_of[r].get(split, {}).get(col, float("nan"))
                                    for s, r in base.run_ids.items()})
            mean, _, _ = mean_std(ev.values)
            base_mean, _, _ = mean_std(base_ev.values)
            lift = (mean - base_mean) / base_mean * 100 if base_mean else float("nan")
            raw.append(float("nan") if row is base else estimate(ev, base_ev).p_value())
            cells_of[id(row)][metric] = (mean, lift)
        for row, p in zip(table.rows, holm(raw)):
            cells_of[id(row)][metric] += (p,)
    return Lift(spec=spec, table=table, base=base, rows=[(row, cells_of[id(row)]) for row in table.rows])

"""The report of a tuning suite (``tuner:``): every trial of every row from the results store, the chosen one, and
the chosen values as a ``<Model>_<dataset>`` config block.

Selection is :meth:`mdl_bench.benchmark.suite.tuning.RowSearch.chosen` (the best validation monitor among the
converged trials); nothing here reads a test metric - trials have none.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import yaml

from mdl_bench.kernel.errors import UserError
from ..suite.tuning import LEARNING_RATE, converged, decade_of, selection_value


@dataclass
class TrialRow:
    variant: object
    run_id: int | None
    result: dict | None
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    span: tuple = ()  # (started_at, finished_at) of the stored run

    @property
    def spec(self):
        return self.variant.trial.spec

    @property
    def converged(self) -> bool:
        return converged(self.spec, self.result, self.variant.trial.search.full_cap)

    @property
    def status(self) -> str:
        if self.result is None:
            return "not run"
        if self.result.get("stopped_by"):
            return self.result["stopped_by"].split(":")[0]
        epochs = int(self.variant.params.get("epochs") or 1)
        if not self.converged:
            return f"budget cap ({epochs} epochs)"
        if self.result.get("best_epoch") == epochs:
            return "best epoch = epoch cap"
        return f"early stop (epoch {self.result.get('epochs_run')})"


@dataclass
class TunedRow:
    row: str
    expid: str
    dataset_id: str
    label: str
    trials: list
    keys: list                     # the tuned keys (those whose value differs between the row's trials)
    chosen: int | None = None
    mode: str = "max"
    monitor: object = None
    extra: dict = field(default_factory=dict)
    finished: bool = False
    own: list = field(default_factory=list)  # the config keys of the row's own axes

    @property
    def epochs_used(self) -> int:
        return sum(int((t.result or {}).get("epochs_run") or 0) for t in self.trials)

    @property
    def chosen_trial(self) -> TrialRow | None:
        return None if self.chosen is None else self.trials[self.chosen]


def build_tuning(suite, store=None, config_dir=None, extra_overrides: dict | None = None) -> list[TunedRow]:
    """Every row of a tuning suite with its trials' stored results (read-only) and the chosen trial."""
    from ..store import Store

    if suite.tuner is None:
        from ..suite.plan import suite_command

        raise UserError(f"{suite.where} has no `tuner:` block, so it is not a tuning suite; use "
                        f"`{suite_command(suite, 'leaderboard', config_dir, store, extra_overrides)}`")
    plan = suite.plan(config_dir, extra_overrides, strict=False)
    db = Store(store or suite.store, create=False)
    try:
        plan.catch_up(db)
        stored = db.stored_keys()
        rows: dict[str, TunedRow] = {}
        for run in plan.runs:
            v = run.variant
            row = rows.get(v.trial.row)
            if row is None:
                base = v.label.rsplit(" #", 1)[0]
                row = rows[v.trial.row] = TunedRow(row=v.trial.row, expid=v.expid, dataset_id=v.dataset_id,
                                                   label=base, trials=[], keys=[], mode=v.trial.monitor_mode,
                                                   monitor=v.params.get("monitor"))
            run_id = stored.get(run.key)
            if run_id is None:
                row.trials.append(TrialRow(v, None, None))
                continue
            got = db.get_run(run_id)
            row.trials.append(TrialRow(v, run_id, got["result"], float(got.get("wall_seconds") or 0.0),
                                       float(got.get("train_seconds") or 0.0),
                                       (float(got["started_at"]), float(got["finished_at"]))))
    finally:
        db.close()
    for row in rows.values():
        points = [t.variant.tuned for t in row.trials]
        keys = list(dict.fromkeys(k for p in points for k in p))
        row.keys = [k for k in keys if len({yaml.safe_dump(p.get(k)) for p in points}) > 1]
        search = row.trials[0].variant.trial.search
        row.chosen = search.chosen([(t.spec, t.result) for t in row.trials])
        row.finished = plan.tuning[row.row].finished
        row.own = [k for a in search.axes if a.own for k in (a.choices[0] if a.categorical else {a.name})]
    return list(rows.values())


def _fmt(value) -> str:
    if value is None:  # a joint axis point that leaves the key at the expid's value
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _metric(result: dict | None, name: str) -> float:
    return float((result or {}).get("valid", {}).get(name, math.nan))


def tuned_expid(row: TunedRow) -> str:
    """The tuned expid's name, FuxiCTR's ``<Model>_<dataset>``: the row's expid without ``_default``, then the
    dataset id."""
    return f"{row.expid.removesuffix('_default')}_{row.dataset_id}"


def config_block(row: TunedRow, suite_name: str, config_dir=None) -> str:
    """The chosen trial as a whole ``<Model>_<dataset>`` block: the row's expid with the chosen values."""
    from ..config import ConfigSet
    from ..resolved import HASH_EXCLUDED

    trial = row.chosen_trial
    if trial is None:
        return f"# {tuned_expid(row)}: no trial of {row.expid} converged yet\n"
    value = selection_value(trial.result, row.mode)
    done = sum(t.result is not None for t in row.trials)
    head = (f"# {tuned_expid(row)}: suite {suite_name}, {row.expid} trial #{row.chosen + 1} ({trial.spec.stage}) "
            f"of {done}, {row.epochs_used} epochs in all; validation monitor {value:.6f}, AUC "
            f"{_metric(trial.result, 'AUC'):.4f}, gAUC {_metric(trial.result, 'gAUC'):.4f}; best epoch "
            f"{trial.result.get('best_epoch')}")
    own = set(ConfigSet(config_dir).models[row.expid])
    params = trial.variant.params
    skip = set(HASH_EXCLUDED) | {"evaluate_test", "tuning_trial"}
    block = {k: params[k] for k in params if (k in own or k in trial.variant.tuned) and k not in skip}
    block["dataset_id"] = row.dataset_id
    if trial.spec.epochs is not None:  # a converged trial whose cap the budget had cut: the row's own cap
        block["epochs"] = trial.variant.trial.search.full_cap
    body = yaml.safe_dump({tuned_expid(row): block}, sort_keys=False, default_flow_style=None, width=110)
    return head + "\n" + body


def own_value_results(row: TunedRow) -> list:
    """``(axis, choice, trial or None)`` for every value of every own key of ``row``: the converged trial at the
    chosen trial's values on every other axis (the chosen recipe), ``None`` when there is none."""
    chosen = row.chosen_trial
    if chosen is None:
        return []
    search = chosen.variant.trial.search
    base = dict(chosen.spec.values)
    out = []
    for axis in (a for a in search.axes if a.own):
        for choice in range(len(axis.choices)):
            wanted = {**base, axis.name: choice}
            match = [t for t in row.trials if t.converged and dict(t.spec.values) == wanted]
            out.append((axis, choice, match[0] if match else None))
    return out


def decade_results(row: TunedRow) -> list:
    """``(decade, best converged trial with its learning rate in it, or None)`` for each decade of the
    learning-rate range."""
    search = row.trials[0].variant.trial.search if row.trials else None
    out = []
    for decade in search.decades() if search else []:
        inside = [t for t in row.trials if decade_of(float(dict(t.spec.values)[LEARNING_RATE])) == decade]
        best = search.chosen([(t.spec, t.result) for t in inside])
        out.append((decade, None if best is None else inside[best]))
    return out


def coverage_lines(rows: list) -> list:
    """What the search measured to convergence: each own value at the chosen recipe, and the best converged
    trial in each learning-rate decade (validation monitor; "-" where none converged)."""
    lines = ["", "## Converged at the chosen recipe", "",
             "Every value of each row's own keys at the chosen recipe, and the best converged trial of each "
             "learning-rate decade (validation monitor; `-`: no converged trial).", "",
             "| row | own values at the chosen recipe | learning-rate decades |", "|---|---|---|"]
    for r in rows:
        own = ", ".join(f"{_own_text(axis, choice)}: "
                        f"{'-' if t is None else format(selection_value(t.result, r.mode), '.5f')}"
                        for axis, choice, t in own_value_results(r)) or "(none)"
        decades = ", ".join(f"1e{d}..1e{d + 1}: {'-' if t is None else format(selection_value(t.result, r.mode), '.5f')}"
                            for d, t in decade_results(r)) or "(learning rate not searched)"
        lines.append(f"| {r.label} | {own} | {decades} |")
    return lines


def _own_text(axis, choice: int) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in axis.config(choice).items())


def protocol_lines(rows: list, tuner) -> list:
    """The search protocol each dataset's rows ran under (a dataset may set its own tuner settings)."""
    lines = []
    datasets = list(dict.fromkeys(r.dataset_id for r in rows))
    for dataset in datasets:
        t = tuner.for_dataset(dataset)
        on = f" on {dataset}" if len(datasets) > 1 else ""
        lines += [f"Protocol{on}: {t.budget} training epochs per row. Stage 1: Optuna's TPE sampler (seed {t.seed}, "
                  f"{t.startup_trials} random trials first) with successive halving (rungs at epoch {t.first_rung} "
                  f"x {t.reduction}^k; the best 1/{t.reduction} of the row's trials at a rung go on, at least the "
                  f"best one{f'; every trial capped at {t.search_epochs} epochs' if t.search_epochs else ''}). "
                  f"Stage 2 at the chosen recipe: every value of the row's own keys and one trial per "
                  f"learning-rate decade, each trained to convergence. Selection: the best validation monitor among "
                  f"the converged trials; the test split is not read.", ""]
    return lines


def render_tuning(rows: list, suite, fmt: str = "md", images: dict | None = None, config_dir=None) -> str:
    """The tuning report: every trial of every row, the chosen values, and the budget curves (md; ``images`` maps
    a plot's name to its path or link)."""
    from .budget import budget_curves, render_budget_md, trial_score

    if fmt == "csv":
        out = io.StringIO()
        keys = list(dict.fromkeys(k for r in rows for k in r.keys))
        writer = csv.writer(out)
        writer.writerow(["row", "expid", "dataset", "trial", "stage", "run_id", "chosen", "status", "epochs_run",
                         "best_epoch", "monitor", "valid_AUC", "valid_gAUC", "train_seconds", *keys])
        for r in rows:
            for i, t in enumerate(r.trials):
                res = t.result or {}
                best_seen = trial_score(res, r.mode)  # a pruned trial's too: the best it reached
                writer.writerow([r.label, r.expid, r.dataset_id, i + 1, t.spec.stage, t.run_id or "", int(i == r.chosen),
                                 t.status, res.get("epochs_run", ""), res.get("best_epoch", ""),
                                 math.nan if best_seen is None else best_seen, _metric(res, "AUC"),
                                 _metric(res, "gAUC"), t.train_seconds,
                                 *[yaml.safe_dump(t.variant.tuned.get(k), default_flow_style=True).strip()
                                   .removesuffix("...").strip() for k in keys]])
        return out.getvalue()
    if fmt != "md":
        raise UserError(f"a tuning suite's report is md or csv, not {fmt!r}; pass --format md or --format csv")
    lines = [f"# Tuning suite {suite.name}", ""]
    if suite.description:
        lines += [suite.description.strip(), ""]
    total_train = sum(tr.train_seconds for r in rows for tr in r.trials)
    total_wall = sum(tr.wall_seconds for r in rows for tr in r.trials)
    done = sum(tr.result is not None for r in rows for tr in r.trials)
    spans = [tr.span for r in rows for tr in r.trials if tr.span]
    elapsed = (f", {(max(b for _, b in spans) - min(a for a, _ in spans)) / 60:.1f} min from the first trial's "
               f"start to the last one's end" if spans else "")
    lines += protocol_lines(rows, suite.tuner)
    lines += [f"Stored: {done} trials, {total_wall / 60:.1f} min of runs ({total_train / 60:.1f} min "
              f"training){elapsed}.", ""]
    lines += ["| row | chosen trial | valid monitor | valid AUC | valid gAUC | best epoch | trials (pruned) | "
              "epochs used | minutes | search done |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r.chosen_trial
        pruned = sum(1 for tr in r.trials if tr.result and tr.result.get("stopped_by"))
        run = sum(1 for tr in r.trials if tr.result is not None)
        minutes = sum(tr.wall_seconds for tr in r.trials) / 60
        finished = "yes" if r.finished else "no"
        if c is None:
            lines.append(f"| {r.label} | - | - | - | - | - | {run} ({pruned}) | {r.epochs_used} | {minutes:.1f} | "
                         f"{finished} |")
            continue
        lines.append(f"| {r.label} | #{r.chosen + 1} ({c.spec.stage}) | {selection_value(c.result, r.mode):.5f} | "
                     f"{_metric(c.result, 'AUC'):.4f} | {_metric(c.result, 'gAUC'):.4f} | "
                     f"{c.result.get('best_epoch')} | {run} ({pruned}) | {r.epochs_used} | {minutes:.1f} | "
                     f"{finished} |")
    lines += coverage_lines(rows)
    for r in rows:
        lines += ["", f"## {r.label} ({r.expid} on {r.dataset_id})", ""]
        header = ["#", "stage"] + r.keys + ["valid monitor", "AUC", "gAUC", "best / run epochs", "status"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for i, tr in enumerate(r.trials):
            res = tr.result or {}
            best_seen = trial_score(res, r.mode)
            mark = " **chosen**" if i == r.chosen else ""
            cells = [f"{i + 1}{mark}", tr.spec.stage] + [_fmt(tr.variant.tuned.get(k)) for k in r.keys] + [
                "-" if best_seen is None else f"{best_seen:.5f}", f"{_metric(res, 'AUC'):.4f}" if res else "-",
                f"{_metric(res, 'gAUC'):.4f}" if res else "-",
                f"{res.get('best_epoch')} / {res.get('epochs_run')}" if res else "-", tr.status]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + render_budget_md(budget_curves(rows))
    lines += [f"![{name}]({path})" for name, path in (images or {}).items()]
    lines += ["", "Chosen values, as whole `<Model>_<dataset>` blocks for `config/model_config.yaml`:", "", "```yaml"]
    lines += [config_block(r, suite.name, config_dir).rstrip("\n") for r in rows]
    lines += ["```", ""]
    return "\n".join(lines)

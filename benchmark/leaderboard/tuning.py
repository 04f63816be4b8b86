"""The report of a tuning suite (``tuner:``): every trial of every row from the results store, the chosen one, and
the chosen values as a config block for ``<Model>_default``.

Selection is :func:`mdl_bench.benchmark.suite.tuning.select` (the best validation monitor among the trials that
were not pruned); nothing here reads a test metric - trials have none.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

import yaml

from mdl_bench.kernel.errors import UserError
from ..suite.tuning import select, selection_value


@dataclass
class TrialRow:
    variant: object
    run_id: int | None
    result: dict | None
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    span: tuple = ()  # (started_at, finished_at) of the stored run

    @property
    def status(self) -> str:
        if self.result is None:
            return "not run"
        if self.result.get("stopped_by"):
            return self.result["stopped_by"].split(":")[0]
        epochs = int(self.variant.params.get("epochs") or 1)
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
        row.chosen = select([t.result for t in row.trials], row.mode)
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


def config_block(row: TunedRow, suite_name: str) -> str:
    """The chosen trial's values as a ``<expid>`` block (only the tuned keys and what the trial fixed)."""
    trial = row.chosen_trial
    if trial is None:
        return f"# {row.expid}: no trial finished unpruned yet\n"
    value = selection_value(trial.result, row.mode)
    done = sum(t.result is not None for t in row.trials)
    head = (f"# {row.expid}: suite {suite_name}, trial #{row.chosen + 1} of {len(row.trials)} ({done} run); "
            f"validation monitor {value:.6f}, AUC {_metric(trial.result, 'AUC'):.4f}, "
            f"gAUC {_metric(trial.result, 'gAUC'):.4f}; best epoch {trial.result.get('best_epoch')}")
    body = yaml.safe_dump({row.expid: dict(trial.variant.tuned)}, sort_keys=False, default_flow_style=None)
    return head + "\n" + body


def render_tuning(rows: list, suite, fmt: str = "md", images: dict | None = None) -> str:
    """The tuning report: every trial of every row, the chosen values, and the budget curves (md; ``images`` maps
    a plot's name to its path or link)."""
    from .budget import budget_curves, render_budget_md, trial_score

    if fmt == "csv":
        out = io.StringIO()
        keys = list(dict.fromkeys(k for r in rows for k in r.keys))
        writer = csv.writer(out)
        writer.writerow(["row", "expid", "dataset", "trial", "run_id", "chosen", "status", "epochs_run",
                         "best_epoch", "monitor", "valid_AUC", "valid_gAUC", "train_seconds", *keys])
        for r in rows:
            for i, t in enumerate(r.trials):
                res = t.result or {}
                best_seen = trial_score(res, r.mode)  # a pruned trial's too: the best it reached
                writer.writerow([r.label, r.expid, r.dataset_id, i + 1, t.run_id or "", int(i == r.chosen),
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
    t = suite.tuner
    trials_text = f"{t.trials} trials per row" if t.trials else "the whole grid per row"
    prune_text = (f"pruned at the end of epoch(s) {', '.join(map(str, t.rungs))} unless in the best "
                  f"{t.keep:.0%} of the row's earlier trials" if t.rungs else "no pruning")
    total_train = sum(tr.train_seconds for r in rows for tr in r.trials)
    total_wall = sum(tr.wall_seconds for r in rows for tr in r.trials)
    done = sum(tr.result is not None for r in rows for tr in r.trials)
    planned = sum(len(r.trials) for r in rows)
    spans = [tr.span for r in rows for tr in r.trials if tr.span]
    elapsed = (f", {(max(b for _, b in spans) - min(a for a, _ in spans)) / 60:.1f} min from the first trial's "
               f"start to the last one's end" if spans else "")
    lines += [f"Protocol: {trials_text} (draw seed {t.seed}), {prune_text}; selection on the validation split by "
              f"the configured monitor; the test split is not read. Stored: {done} of {planned} trials, "
              f"{total_wall / 60:.1f} min of runs ({total_train / 60:.1f} min training){elapsed}.", ""]
    lines += ["| row | chosen trial | valid monitor | valid AUC | valid gAUC | best epoch | trials run (pruned) | "
              "minutes |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r.chosen_trial
        pruned = sum(1 for tr in r.trials if tr.result and tr.result.get("stopped_by"))
        run = sum(1 for tr in r.trials if tr.result is not None)
        minutes = sum(tr.wall_seconds for tr in r.trials) / 60
        if c is None:
            lines.append(f"| {r.label} | - | - | - | - | - | {run} ({pruned}) | {minutes:.1f} |")
            continue
        lines.append(f"| {r.label} | #{r.chosen + 1} | {selection_value(c.result, r.mode):.5f} | "
                     f"{_metric(c.result, 'AUC'):.4f} | {_metric(c.result, 'gAUC'):.4f} | "
                     f"{c.result.get('best_epoch')} | {run} ({pruned}) | {minutes:.1f} |")
    for r in rows:
        lines += ["", f"## {r.label} ({r.expid} on {r.dataset_id})", ""]
        header = ["#"] + r.keys + ["valid monitor", "AUC", "gAUC", "best / run epochs", "status"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for i, tr in enumerate(r.trials):
            res = tr.result or {}
            best_seen = trial_score(res, r.mode)
            mark = " **chosen**" if i == r.chosen else ""
            cells = [f"{i + 1}{mark}"] + [_fmt(tr.variant.tuned.get(k)) for k in r.keys] + [
                "-" if best_seen is None else f"{best_seen:.5f}", f"{_metric(res, 'AUC'):.4f}" if res else "-",
                f"{_metric(res, 'gAUC'):.4f}" if res else "-",
                f"{res.get('best_epoch')} / {res.get('epochs_run')}" if res else "-", tr.status]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + render_budget_md(budget_curves(rows))
    lines += [f"![{name}]({path})" for name, path in (images or {}).items()]
    lines += ["", "Chosen values, as blocks for `config/model_config.yaml` (layered over each expid):", "", "```yaml"]
    lines += [config_block(r, suite.name).rstrip("\n") for r in rows]
    lines += ["```", ""]
    return "\n".join(lines)

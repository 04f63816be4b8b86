"""Finished runs of the results store (:mod:`..store`) as the analysis's :class:`~.report.RunRef`, and the folder
where a suite's analysis goes: ``<store folder>/analysis/<suite name>/``, beside the store the suite writes to,
which is where the HTML leaderboard of the suite looks for the figures (:func:`suite_analysis_dir`).

A suite's runs are the ``(config hash, seed)`` pairs its plan defines (the suite machinery expands it, as the
leaderboard does), so a run stored earlier by another suite with the same config counts too; rows keep the
suite's labels and groups.
"""
from __future__ import annotations

from pathlib import Path

from mdl_bench.kernel.errors import UserError


def _plan(suite: str, config_dir=None, overrides: dict | None = None):
    from ..suite import load_suite

    suite_obj = load_suite(suite, config_dir)
    return suite_obj, suite_obj.plan(config_dir, extra_overrides=overrides or None, strict=False)


def runs(store_path, suite: str | None = None, run_ids=None, config_dir=None, model: str | None = None,
         overrides: dict | None = None) -> list:
    """Stored runs (in store order): those of ``suite`` (planned with the extra ``overrides`` it was run with),
    or the given ``run_ids``, or all of them (of ``model`` only, when given)."""
    from ..store import Store, local_config
    from mdl_bench.model_zoo import model_group
    from .report import RunRef

    labels: dict = {}
    if suite is not None:
        suite_obj, plan = _plan(suite, config_dir, overrides)
        store_path = store_path or suite_obj.store
    with Store(store_path, create=False) as store:
        if suite is not None:
            for run in plan.unique_runs():
                run_id = store.run_id(*run.key)
                if run_id is not None:
                    labels[run_id] = (run.variant.label, run.variant.group)
            rows = store.list_runs(sorted(labels))
        elif run_ids:
            try:
                ids = [int(r) for r in run_ids]
            except ValueError:
                raise UserError(f"run ids are integers (`mdl-bench runs --store {store.path}` lists them), got "
                                f"{', '.join(run_ids)}") \
                    from None
            rows = store.list_runs(ids)
            missing = sorted(set(ids) - {r["run_id"] for r in rows})
            if missing:
                raise UserError(f"no run {missing[0]} in {store.path}; `mdl-bench runs --store {store.path}` lists the "
                                f"stored runs")
        else:
            rows = store.list_runs()
        if model is not None:
            rows = [r for r in rows if r["model"] == model]
        out = []
        for row in rows:
            run = store.get_run(row["run_id"])
            label, group = labels.get(row["run_id"], (run["expid"], model_group(run["model"])))
            out.append(RunRef(label=str(label), params=local_config(run["config"]), checkpoint=run["checkpoint"],
                              run_id=str(row["run_id"]), seed=run["seed"], group=group,
                              test=run["metrics"].get("test") or None))
    return out


def suite_analysis_dir(store_path, suite: str, config_dir=None) -> Path:
    """``<store folder>/analysis/<suite name>/``: where ``analyze --suite`` writes and the leaderboard looks.

    ``store_path`` ``None`` means the suite's own store (its ``store:`` key), else the default store."""
    from ..store import store_path as resolve_store
    from ..suite import load_suite
    from .html import suite_analysis_dir as folder_of

    suite_obj = load_suite(suite, config_dir)
    return folder_of(suite_obj, resolve_store(store_path or suite_obj.store))

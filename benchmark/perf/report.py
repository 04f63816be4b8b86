"""The Markdown report of ``mdl-bench perf`` (also printed): targets first, then one section per measurement."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .targets import CONTENDED

MB = 1024 * 1024


def _fmt(value, fmt: str = "{:,.0f}") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return fmt.format(value)


def _mb(value) -> str:
    return _fmt(None if value is None else value / MB, "{:,.0f} MB")


def _header(result: dict) -> list[str]:
    meta = result["meta"]
    return [f"# mdl-bench perf, {meta['date']}", "",
            f"`{meta['command']}` on {meta['cores']} cores ({meta['torch_threads']} torch threads), load average "
            f"{meta['load_start']} at start, {meta['load_end']} at end; torch {meta['torch']}, fuxictr "
            f"{meta['fuxictr']}; {'quick' if meta['quick'] else 'full'} run, {meta['seconds']:.0f} s; allocator "
            f"{'tuned' if meta['allocator_tuned'] else 'default'}.", "",
            "CPU share used by other processes during each phase: " + ", ".join(
                f"{k} {v:.0%}" for k, v in (meta.get("others_cpu") or {}).items()) +
            f" (figures of a phase above {CONTENDED:.0%} are flagged)."]


def _targets(result: dict) -> list[str]:
    out = ["", "## Targets (ratios measured in this run)", "", "| target | measured | goal | met |", "|---|---|---|---|"]
    for row in result["targets"]:
        goal = row["format"].format(row["goal"]) if "d}" not in row["format"] else str(row["goal"])
        met = {True: "yes", False: "**no**", None: "not measured"}[row["met"]]
        note = f" ({row['note']})" if row["note"] else ""
        out.append(f"| {row['target']} | {_fmt(row['value'], row['format'])} | {row['direction']} {goal} | "
                   f"{met}{note} |")
    return out


def _models(models: dict) -> list[str]:
    first = next(iter(models.values()))
    out = ["", f"## Training throughput per model (batch {first['batch_size']}, {first['repeats']} epochs of "
               f"the batches shown; medians)", "",
           "| model | real samples/s | bare samples/s | real / bare | batches | step ms | data | forward | "
           "backward | optimiser | eval samples/s | parameters |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in models.values():
        s = m["split_ms"]
        out.append(f"| {m['display_name']} | {_fmt(m['real_sps'])} | {_fmt(m['bare_sps'])} | "
                   f"{m['real_over_bare']:.2f} | {m['batches']} | {_fmt(m['bare_step_ms'], '{:.0f}')} | "
                   f"{_fmt(s.get('data'), '{:.1f}')} | {_fmt(s.get('forward'), '{:.0f}')} | "
                   f"{_fmt(s.get('backward'), '{:.0f}')} | {_fmt(s.get('optimizer'), '{:.0f}')} | "
                   f"{_fmt(m['eval_sps'])} | {m['num_parameters']:,} |")
    out.append("")
    out.append("real = `make_loaders` + `fit` as run-expid (evaluation excluded); bare = zero_grad, forward + "
               "loss, backward, clip, Adam step on in-memory batches; step ms = bare step; the split is the "
               "real path's (data = next batch from the loader; optimiser = zero_grad + clip + step).")
    return out


def _library(library: dict) -> list[str]:
    if "skipped" in library:
        return ["", f"Public library: {library['skipped']}."]
    out = ["", f"## Beside a public library: {library['library']} ({library['package']} at "
               f"{(library.get('commit') or 'an unknown commit')[:12]})", "",
           "| model | library class | this package real samples/s | this package bare | library bare samples/s | "
           "real / library bare | parameters (ours / library) |", "|---|---|---|---|---|---|---|"]
    for m in library["models"].values():
        out.append(f"| {m['display_name']} | {m['theirs']} | {_fmt(m['real_sps'])} | {_fmt(m['bare_sps'])} | "
                   f"{_fmt(m['theirs_bare_sps'])} | {m['real_over_theirs']:.2f} | {m['num_parameters']:,} / "
                   f"{m['theirs_num_parameters']:,} |")
    recipe = next((m["recipe"] for m in library["models"].values() if m.get("recipe")), None)
    both = (" Both sides ran with " + ", ".join(f"{k} {v}" for k, v in recipe.items()) + " (ours whatever its "
            "`_default` block says), so that they time the same network.") if recipe else ""
    out += ["", "Library bare = its trainer's step (zero_grad, forward, BCE, backward, Adam) on our batches already "
                "in memory, same process and threads; real = `make_loaders` + `fit`." + both + " Matched: " + "; ".join(
                    f"{m['display_name']}: {m['how']}" for m in library["models"].values()) + "."]
    if library.get("unmatched"):
        out.append("Not matched: " + "; ".join(f"{n}: {why}" for n, why in library["unmatched"].items()) + ".")
    return out


def _matched(matched: dict, stock: dict) -> list[str]:
    out = ["", "## FuxiCTR's stock pipeline vs this package (matched architectures)", "",
           "| model | this package samples/s | FuxiCTR stock samples/s | speed-up | this package bare | "
           "FuxiCTR bare | parameters (ours / stock) |", "|---|---|---|---|---|---|---|"]
    for name in ("DNN", "MMoE"):
        ours = matched.get(name) or {}
        theirs = (stock.get("models") or {}).get(name) or {}
        out.append(f"| {name} | {_fmt(ours.get('real_sps'))} | {_fmt(theirs.get('real_sps'))} | "
                   f"{_fmt((stock.get('speedup') or {}).get(name), '{:.2f}x')} | {_fmt(ours.get('bare_sps'))} | "
                   f"{_fmt(theirs.get('bare_sps'))} | {_fmt(ours.get('num_parameters'))} / "
                   f"{_fmt(theirs.get('num_parameters'))} |")
    out.append("")
    if stock:
        out.append(f"Stock: `RankDataLoader` (parquet -> Ray Data) + `BaseModel.fit`, {stock['epochs']} full "
                   f"epochs of {stock['rows_per_epoch']:,} rows; loader set-up {stock['loader_seconds']:.1f} s; "
                   f"{stock['ray_processes']} Ray processes; peak RSS of its process tree "
                   f"{_mb(stock['peak_rss_bytes'])}. This package: same data, `make_loaders` + `fit`.")
    else:
        out.append("Stock FuxiCTR run skipped (quick mode); this package's side only.")
    return out


def _covloss(cov: dict) -> list[str]:
    out = ["", f"## CovLoss in a Crocodile step (M = {cov.get('num_tables')}; default cov_sample_rows = "
               f"{cov['default_sample_rows']})", "", "| CovLoss | step ms | CovLoss forward+backward ms | share |",
           "|---|---|---|---|"]
    for label, entry in cov["settings"].items():
        out.append(f"| {label} | {entry['step_ms']:.0f} | {_fmt(entry.get('cov_ms'), '{:.1f}')} | "
                   f"{_fmt(entry.get('share'), '{:.1%}')} |")
    if cov.get("crocodile_over_me_mmoe") is not None:
        out.append("")
        out.append(f"Crocodile bare step / ME-MMoE bare step (same M): {cov['crocodile_over_me_mmoe']:.2f}.")
    return out


def _gauc(gauc: dict) -> list[str]:
    return ["", f"## gAUC ({gauc['rows']:,} rows, {gauc['users']:,} users)", "", "| | seconds | gAUC |",
            "|---|---|---|",
            f"| this package (`metrics.gauc_score`) | {gauc['project_seconds']:.3f} | {gauc['project_value']:.12f} |",
            f"| `fuxictr.metrics` | {gauc['fuxictr_seconds']:.2f} | {gauc['fuxictr_value']:.12f} |", "",
            f"Speed-up {gauc['speedup']:.0f}x; max abs difference {gauc['max_abs_diff']:.1e}."]


def _build(build: dict) -> list[str]:
    out = ["", f"## Dataset build ({build['rows']:,} raw rows: train/valid/test "
               f"{build['splits']['train']:,}/{build['splits']['valid']:,}/{build['splits']['test']:,})", "",
           "| | seconds | peak RSS, process tree | Ray processes |", "|---|---|---|---|"]
    for label, key in (("this package", "project"), ("FuxiCTR `build_dataset`", "fuxictr")):
        entry = build.get(key)
        if entry:
            out.append(f"| {label} | {entry['seconds']:.1f} | {_mb(entry['peak_rss_bytes'])} | "
                       f"{entry['ray_processes']} |")
    out.append("")
    out.append("Each build runs in its own child process; seconds around the build call, peak = sampled sum of "
               "RSS over the child and its descendants (imports included on both sides).")
    return out


def _memory(mem: dict, ray: dict) -> list[str]:
    return ["", "## Memory and Ray", "",
            f"Peak RSS of this process tree while this package trained (models, matched, scaling): "
            f"{_mb(mem['project_peak_rss_bytes'])}; Ray processes seen on the default path: "
            f"{ray['default_path']}."]


def _scaling_axis(scaling: dict, axis: str, label: str) -> list[str]:
    """One scaling table: step time of each model and Crocodile's parts at every value of M or K."""
    display = scaling.get("display") or {}
    values = scaling[axis]["values"]
    title = ("embedding tables M (default data)" if axis == "tables" else
             f"domains K (synthetic data, M = {scaling['domains']['fixed_tables']})")
    out = [f"### {title}", ""]
    croc = scaling[axis].get("Crocodile") or []
    parts = list(croc[0]["components_ms"] or {}) if croc else []  # None: Crocodile's step not split
    columns = ([f"{display.get(n, n)} step ms" for n in scaling["models"]] +
               [" / ".join(display.get(n, n) for n in scaling["models"])] +
               [f"Crocodile {p}" for p in parts] + ["Crocodile optimiser"])
    out += [f"| {label} | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for i, value in enumerate(values):
        steps = [(scaling[axis].get(n) or [{}] * len(values))[i].get("step_ms") for n in scaling["models"]]
        ratio = steps[0] / steps[1] if len(steps) > 1 and steps[0] and steps[1] else None
        comp = (croc[i]["components_ms"] or {}) if croc else {}
        cells = ([_fmt(s, "{:.0f}") for s in steps] + [_fmt(ratio, "{:.2f}")] +
                 [_fmt(comp.get(p), "{:.1f}") for p in parts] +
                 [_fmt(croc[i]["optimizer_ms"] if croc else None, "{:.1f}")])
        out.append(f"| {value} | " + " | ".join(cells) + " |")
    out.append("")
    return out


def _scaling(scaling: dict, png: str | None) -> list[str]:
    out = ["", "## Scaling", ""]
    for axis, label in (("tables", "M"), ("domains", "K")):
        out += _scaling_axis(scaling, axis, label)
    display = scaling.get("display") or {}
    unsplit = [display.get(n, n) for n in scaling["models"]
               if any(p["components_ms"] is None for axis in ("tables", "domains")
                      for p in scaling[axis].get(n) or [])]
    if unsplit:
        out += [f"Not split into parts (the model's `step_components` returns None): {', '.join(unsplit)}.", ""]
    out.append("Parts: forward+backward ms of each part on its own (detached inputs); optimiser = zero_grad + "
               "clip + Adam step.")
    out += ["", scaling["explanation"]]
    if png:
        out += ["", f"![scaling]({Path(png).name})"]
    return out


def render_markdown(result: dict) -> str:
    """The report of one perf result (the JSON's dict): a header, the targets, then each measurement present."""
    out = _header(result) + _targets(result)
    if result.get("models"):
        out += _models(result["models"])
    if result.get("library"):
        out += _library(result["library"])
    if result.get("matched"):
        out += _matched(result["matched"], result.get("stock") or {})
    if result.get("covloss"):
        out += _covloss(result["covloss"])
    if result.get("gauc"):
        out += _gauc(result["gauc"])
    if result.get("build"):
        out += _build(result["build"])
    if result.get("memory"):
        out += _memory(result["memory"], result["ray"])
    if result.get("scaling"):
        out += _scaling(result["scaling"], result.get("files", {}).get("png"))
    return "\n".join(out) + "\n"

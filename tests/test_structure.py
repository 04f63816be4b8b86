"""The import structure, computed from the code: layers whose imports point one way, and no import circles.

Every module of the package belongs to one layer (the longest matching prefix of :data:`LAYERS`); a module may
import modules of its own layer or of a layer below, never one above, and the import graph (every ``import``,
the ones inside functions included) has no circle. The models never import the benchmark. A new module that
matches no layer fails here until it is given one.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"mdl_bench.kernel": ROOT / "kernel", "mdl_bench.model_zoo": ROOT / "model_zoo",
                "mdl_bench.benchmark": ROOT / "benchmark"}
B = "mdl_bench.benchmark"

#: bottom first; each layer lists module prefixes (see docs/architecture.md)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("kernel", ("mdl_bench.kernel",)),
    ("core", ("mdl_bench.model_zoo.core",)),
    ("data", (f"{B}.schema", f"{B}.config", f"{B}.data")),
    ("layers", ("mdl_bench.model_zoo.layers",)),
    ("models", ("mdl_bench.model_zoo",)),
    ("measure", (f"{B}.measure",)),
    ("runner", (f"{B}.resolved", f"{B}.codeid", f"{B}.runner", f"{B}.distributed", f"{B}.procs", f"{B}.report")),
    ("suite/store", (f"{B}.store", f"{B}.suite")),
    ("leaderboard/analysis/perf", (f"{B}.leaderboard", f"{B}.analysis", f"{B}.perf", f"{B}.contract")),
    ("cli", (f"{B}.cli",)),
]


#: package roots that only hold a docstring (they must import nothing; they are in no layer)
NAMESPACES = ("mdl_bench.benchmark",)


def package_modules() -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of the package (a package is its ``__init__``)."""
    out = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def imports_of(name: str, path: Path, modules) -> set[str]:
    """The package modules ``name`` imports anywhere in its file (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                prefix = here[:len(here) - node.level + 1]
                base = ".".join(prefix + ([node.module] if node.module else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a name inside module a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = package_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str, layers=LAYERS) -> int | None:
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def violations(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """One line per problem: a module in no layer, an upward import, a model importing the benchmark, a circle."""
    problems = []
    for module in sorted(graph):
        mine = layer_of(module, layers)
        if module in NAMESPACES:
            if graph[module]:
                problems.append(f"{module} is a namespace package; it must import nothing")
            continue
        if mine is None:
            problems.append(f"{module} is in no layer; add it to LAYERS in tests/test_structure.py and docs/architecture.md")
            continue
        for target in sorted(graph[module]):
            theirs = layer_of(target, layers)
            if theirs is not None and theirs > mine:
                problems.append(f"{module} ({layers[mine][0]}) imports {target} ({layers[theirs][0]}), a layer above")
            if module.startswith("mdl_bench.model_zoo") and target.startswith(B):
                problems.append(f"{module} (a model or layer) imports the benchmark ({target})")
    problems += [f"import circle: {' -> '.join(c)}" for c in circles(graph)]
    return problems


def test_the_package_has_one_way_layers_and_no_circles():
    graph = import_graph()
    assert len(graph) > 40  # the walk found the package
    assert violations(graph) == []


def test_every_layer_holds_a_module():
    graph = import_graph()
    used = {layer_of(m) for m in graph if m not in NAMESPACES}
    assert used == set(range(len(LAYERS)))


@pytest.mark.parametrize("graph, expected", [
    ({"mdl_bench.kernel.errors": {"mdl_bench.benchmark.runner"}, "mdl_bench.benchmark.runner": set()},
     ["mdl_bench.kernel.errors (kernel) imports mdl_bench.benchmark.runner (runner), a layer above"]),
    ({"mdl_bench.model_zoo.core.metrics": {"mdl_bench.benchmark.runner"}, "mdl_bench.benchmark.runner": set()},
     ["mdl_bench.model_zoo.core.metrics (core) imports mdl_bench.benchmark.runner (runner), a layer above",
      "mdl_bench.model_zoo.core.metrics (a model or layer) imports the benchmark (mdl_bench.benchmark.runner)"]),
    ({f"{B}.suite.plan": {f"{B}.store"}, f"{B}.store": {f"{B}.suite.plan"}},
     [f"import circle: {B}.store -> {B}.suite.plan"]),
    ({f"{B}.newthing": set()}, [f"{B}.newthing is in no layer; add it to LAYERS in tests/test_structure.py and docs/architecture.md"]),
    ({f"{B}.cli": {f"{B}.runner"}, f"{B}.runner": set()}, []),
])
def test_the_checker_finds_each_kind_of_problem(graph, expected):
    assert violations(graph) == expected


def test_imports_are_resolved_from_the_syntax(tmp_path):
    modules = {"mdl_bench.benchmark": None, "mdl_bench.benchmark.data": None, "mdl_bench.benchmark.data.build": None,
               "mdl_bench.benchmark.runner": None, "mdl_bench.model_zoo": None, "mdl_bench.model_zoo.core": None,
               "mdl_bench.kernel.errors": None}
    source = tmp_path / "runner.py"
    source.write_text("from .data.build import x\nfrom . import data\nimport mdl_bench.kernel.errors\n"
                      "def f():\n    from mdl_bench.kernel.errors import UserError\n"
                      "    from mdl_bench.model_zoo import get_model\n")
    assert imports_of("mdl_bench.benchmark.runner", source, modules) == {
        "mdl_bench.benchmark.data.build", "mdl_bench.benchmark.data", "mdl_bench.kernel.errors",
        "mdl_bench.model_zoo"}


def test_importing_the_package_leaves_the_process_warning_filters_alone():
    import subprocess
    import sys

    # third-party imports (scipy, Ray under FuxiCTR) add narrow filters of their own; ours would be blanket ones
    probe = ("[c.__name__ for a, m, c, mod, _ in warnings.filters if a == 'ignore' and m is None and mod is None "
             "and c in (DeprecationWarning, FutureWarning)]")
    code = (f"import warnings; before = {probe}; import mdl_bench.benchmark.cli as cli, mdl_bench.benchmark.suite, "
            f"mdl_bench.model_zoo; EXTRA; print(len({probe}) - len(before))")
    runs = {extra: subprocess.run([sys.executable, "-c", code.replace("EXTRA", extra)], capture_output=True,
                                  text=True, check=True).stdout.strip()
            for extra in ("pass", "cli.warnings.filterwarnings('ignore', category=FutureWarning)")}
    assert runs == {"pass": "0", "cli.warnings.filterwarnings('ignore', category=FutureWarning)": "1"}


def test_a_model_built_without_model_root_checkpoints_under_mdl_bench_home(tiny, tmp_path, monkeypatch):
    from mdl_bench.benchmark.runner import resolve

    monkeypatch.setenv("MDL_BENCH_HOME", str(tmp_path / "home"))
    params, model_class, _ = resolve("SharedBottom_test", None, {"verbose": 0})
    params.pop("model_root")
    model = model_class(tiny.feature_map, **params)
    assert Path(model.checkpoint).is_relative_to(tmp_path / "home" / "checkpoints")


# ------------------------------------------------------------------ the run path: one resolution per run
@pytest.fixture
def resolutions(monkeypatch):
    """Every config resolution (``ConfigSet.load``: Base <- expid <- dataset <- overrides) made while it is
    active, by expid, and the folder of every config set read (a run path that wrote its config out to read it
    back would show its temporary folder here)."""
    from mdl_bench.benchmark.config import ConfigSet

    calls: list[str] = []
    folders: list[str] = []
    original_load, original_init = ConfigSet.load, ConfigSet.__init__

    def load(self, expid, overrides=None):
        calls.append(expid)
        return original_load(self, expid, overrides)

    def init(self, config_dir=None):
        original_init(self, config_dir)
        if config_dir is not None:
            folders.append(str(config_dir))

    monkeypatch.setattr(ConfigSet, "load", load)
    monkeypatch.setattr(ConfigSet, "__init__", init)
    return calls, folders


def test_run_expid_resolves_its_config_once(tiny, resolutions, tmp_path, monkeypatch, capsys):
    from mdl_bench.benchmark.cli import main

    monkeypatch.setenv("MDL_BENCH_HOME", str(tmp_path))
    calls, folders = resolutions
    assert main(["run-expid", "--expid", "SharedBottom_test", "--epochs", "1", "--set", "verbose=0"]) == 0
    assert calls == ["SharedBottom_test"] and folders == []


def test_a_suite_resolves_each_run_once_and_rerun_resolves_nothing(tiny, resolutions, tmp_path, monkeypatch):
    import io

    from mdl_bench.benchmark.store import Store
    from mdl_bench.benchmark.suite import Suite, rerun, run_suite

    monkeypatch.setenv("MDL_BENCH_HOME", str(tmp_path))
    calls, folders = resolutions
    suite = Suite({"name": "path", "seeds": [1, 2], "overrides": {"epochs": 1, "batch_size": 2048},
                   "expids": ["SharedBottom_test"]})
    store = tmp_path / "runs.sqlite"
    outcome = run_suite(suite, store=str(store), out=lambda line: None, progress_stream=io.StringIO())
    assert outcome.failed == [] and len(outcome.stored_now) == 2
    assert calls == ["SharedBottom_test"]  # one variant, two seeds: resolved once, by the plan
    calls.clear()
    with Store(store, create=False) as db:
        run_id = next(iter(db.stored_keys().values()))
    assert rerun(run_id, store=str(store), out=lambda line: None, progress_stream=io.StringIO())
    assert calls == [] and folders == []  # the stored config runs as it is


def test_a_resolved_run_travels_without_being_resolved_again(resolutions):
    import pickle

    from mdl_bench.benchmark.resolved import resolve_run

    calls, _ = resolutions
    run = resolve_run("SharedBottom_test", None, {"verbose": 0, "seed": 7}, name_by_config=True)
    copy = pickle.loads(pickle.dumps(run))  # what a data-parallel rank or a suite worker receives
    assert calls == ["SharedBottom_test"]
    assert (copy.params, copy.model_class, copy.config_hash, copy.model_id) == (
        run.params, run.model_class, run.config_hash, run.model_id)
    assert run.model_id == f"SharedBottom_test__s7__{run.config_hash[:8]}"

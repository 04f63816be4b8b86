"""Adding a baseline without touching the package: the documentation's "Add a model" example followed to the
letter, external model discovery (folders, modules, entry points, the environment), its errors, and `check-model`.

The example is read from docs/add-a-model.md itself (its files and its `mdl-bench` command lines), so the guide
cannot drift from what works."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import sqlite3
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

import mdl_bench.model_zoo as zoo
from mdl_bench.benchmark.cli import main
from mdl_bench.kernel.errors import UserError

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "add-a-model.md"


def readme_example() -> tuple[dict, list]:
    """The files (``{name: text}``) and the ``mdl-bench`` command lines of the guide's worked example."""
    text = GUIDE.read_text(encoding="utf-8")
    start = text.index("\n## A worked example\n")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end > 0 else None]
    files = dict(re.findall(r"\(save as `([^`]+)`\):\n\n```\w*\n(.*?)\n```", section, re.S))
    commands = [line.strip() for block in re.findall(r"```sh\n(.*?)```", section, re.S)
                for line in block.splitlines() if line.strip().startswith("mdl-bench ")]
    return files, commands


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def fresh_registry(monkeypatch):
    """A registry that has seen only the built-in models; the global one is restored afterwards."""
    monkeypatch.setenv(zoo.ENV_VAR, "")  # restored after the test (the CLI adds --models-from to it)
    monkeypatch.setattr(zoo, "_state", zoo._Registry())
    return zoo


# -------------------------------------------------------------------------------------------- the guide example
@pytest.fixture(scope="module")
def readme_run(tiny, tmp_path_factory):
    """The guide's files written into an empty folder and its commands run there, in order (in-process CLI)."""
    files, commands = readme_example()
    folder = tmp_path_factory.mktemp("add_baseline")
    for name, content in files.items():
        (folder / name).write_text(content + "\n", encoding="utf-8")
    outputs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        mp.setenv(zoo.ENV_VAR, "")
        mp.setattr(zoo, "_state", zoo._Registry())
        for line in commands:
            outputs.append((line, *cli(*shlex.split(line, comments=True)[1:])))
    return SimpleNamespace(folder=folder, files=files, commands=commands, outputs=outputs)


def test_readme_names_the_three_files_and_the_three_commands():
    files, commands = readme_example()
    assert set(files) == {"DomainGatedMoE.py", "model_config.yaml", "my_suite.yaml"}
    assert [c.split()[1] for c in commands] == ["check-model", "run", "leaderboard"]
    assert "class DomainGatedMoE(MultiDomainModel)" in files["DomainGatedMoE.py"]
    for layer in ("MultiEmbedding", "BatchedMLP", "SoftmaxGate", "DomainTowers"):
        assert layer in files["DomainGatedMoE.py"]


def test_readme_example_passes_check_model_trains_and_shows_the_new_row(readme_run):
    for line, code, out, err in readme_run.outputs:
        assert code == 0, f"{line} exited {code}: {err[-2000:]}"
    _, _, check, _ = readme_run.outputs[0]
    for name in ("config", "data", "logits", "shapes", "gradients", "one step", "checkpoint", "step components"):
        assert re.search(rf"^PASS  {name}\s", check, re.M), check
    assert "DomainGatedMoE: all 10 checks passed" in check and "gate_fields: every slot is its field" in check
    for _, _, out, _ in readme_run.outputs[1:]:  # `run` prints the leaderboard, then `leaderboard` again
        # the main table's rows (each cell a mean with its interval); the rank table below repeats the labels
        rows = [r for r in out.splitlines() if r.startswith("|") and ("DG-MoE" in r or "| MMoE" in r) and "±" in r]
        assert len(rows) == 2, out
        new = [r for r in rows if "DG-MoE" in r][0]
        assert new.split("|")[1].strip() == "MDL"  # the class's group
        values = [float(c.split()[0].strip("*")) for c in new.split("|")[3:15]]
        assert all(0.3 < v < 1 for v in values)  # 5 domains + Overall, AUC and gAUC
        assert new.split("|")[15].strip() in ("1", "2", "1–2")  # the row's rank interval (of two rows)
    with sqlite3.connect(readme_run.folder / "results.sqlite") as db:  # the suite's own store, beside it
        stored = dict(db.execute("SELECT expid, config_json FROM runs").fetchall())
    assert set(stored) == {"MMoE_test", "DomainGatedMoE_test"}
    assert json.loads(stored["DomainGatedMoE_test"])["models_from"] == str(readme_run.folder.resolve())
    assert "models_from" not in json.loads(stored["MMoE_test"])  # built-in runs keep their configs (and hashes)


def test_rerun_of_a_stored_external_model_needs_no_option(readme_run, tmp_path, monkeypatch, fresh_registry):
    with sqlite3.connect(readme_run.folder / "results.sqlite") as db:
        (run_id,) = db.execute("SELECT run_id FROM runs WHERE expid = 'DomainGatedMoE_test'").fetchone()
    monkeypatch.chdir(tmp_path)  # elsewhere, with a registry that has never seen the model
    assert "DomainGatedMoE" not in fresh_registry.registry()
    code, out, err = cli("rerun", str(run_id), "--store", str(readme_run.folder / "results.sqlite"))
    assert code == 0, err[-2000:]
    assert re.search(r"All \d+ values match exactly", out), out


# ------------------------------------------------------------------------------------------- discovery
MODEL_TEMPLATE = """
from mdl_bench.model_zoo import MultiDomainModel


class {name}(MultiDomainModel):
    group = "MDL"
"""


def write_model(folder: Path, name: str, body: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(body if body is not None else MODEL_TEMPLATE.format(name=name))
    return path


def test_name_clash_with_a_builtin_names_both_files(tmp_path, fresh_registry):
    mine = write_model(tmp_path / "mine", "MMoE")
    with pytest.raises(UserError) as info:
        fresh_registry.add_models_from(tmp_path / "mine")
    message = str(info.value)
    assert str(mine) in message and str(Path(fresh_registry.__file__).parent / "MMoE.py") in message
    code, out, err = cli("models", "--models-from", str(tmp_path / "mine"))
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: model 'MMoE' of ") and str(mine) in err


def test_name_clash_between_two_folders(tmp_path, fresh_registry):
    first, second = write_model(tmp_path / "a", "Twin"), write_model(tmp_path / "b", "Twin")
    fresh_registry.add_models_from(tmp_path / "a")
    with pytest.raises(UserError, match=f"{re.escape(str(second))} clashes with the model 'Twin' of "
                                        f"{re.escape(str(first))}"):
        fresh_registry.add_models_from(tmp_path / "b")


def test_broken_model_file_is_reported_and_hides_nothing(tmp_path, fresh_registry):
    folder = tmp_path / "models"
    write_model(folder, "GoodNet")
    broken = write_model(folder, "BadNet", "import no_such_module_h9\n\nclass BadNet:\n    pass\n")
    (folder / "notes.py").write_text("raise SystemExit('a script that is not a model is never imported')\n")
    code, out, err = cli("models", "--models-from", str(folder))
    assert code == 0
    assert re.search(r"^GoodNet\s+\[MDL\].*\(from .*GoodNet\.py\)$", out, re.M)
    assert "Crocodile" in out and "BadNet" not in out
    assert os.environ[fresh_registry.ENV_VAR] == str(folder.resolve())  # what processes it starts inherit
    warnings = err.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith(f"warning: model file {broken} failed to import")
    assert "ModuleNotFoundError: No module named 'no_such_module_h9'" in warnings[0]
    with pytest.raises(UserError, match=rf"model 'BadNet' could not be loaded: {re.escape(str(broken))} failed to "
                                        rf"import \(ModuleNotFoundError: No module named 'no_such_module_h9'\)"):
        fresh_registry.get_model("BadNet")
    code, _, err = cli("check-model", "BadNet", "--models-from", str(folder))
    assert code == 2 and "error: model 'BadNet' could not be loaded" in err and str(broken) in err


def test_missing_location_is_a_one_line_error(tmp_path, fresh_registry):
    code, _, err = cli("models", "--models-from", str(tmp_path / "nowhere"))
    assert code == 2 and err.strip() == (f"error: models folder {tmp_path / 'nowhere'} does not exist; pass an "
                                         f"existing folder (or a <Name>.py file) to --models-from, or fix "
                                         f"`models_from`")
    code, _, err = cli("models", "--models-from", "no_such_package_h9.models")
    assert code == 2 and err.startswith("error: models location 'no_such_package_h9.models' is neither a folder")
    assert "nor an importable module" in err


def test_environment_variable_adds_a_folder(tmp_path, monkeypatch, fresh_registry):
    write_model(tmp_path / "env_models", "EnvNet")
    monkeypatch.setenv(fresh_registry.ENV_VAR, str(tmp_path / "env_models"))
    assert "EnvNet" in fresh_registry.registry()
    assert fresh_registry.model_location("EnvNet") == str((tmp_path / "env_models").resolve())
    assert fresh_registry.model_location("MMoE") is None


def test_entry_points_and_modules(tmp_path, monkeypatch, fresh_registry):
    """A plugin distribution on sys.path (a dist-info with entry_points.txt) registers its class; an entry point
    that fails to load is a warning, and asking for it by name says why."""
    import importlib

    package = tmp_path / "h9plugin_pkg"
    write_model(package, "models", MODEL_TEMPLATE.format(name="PluginNet"))
    (package / "__init__.py").write_text("")
    info = tmp_path / "h9plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: h9plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[mdl_bench.models]\nPluginNet = h9plugin_pkg.models:PluginNet\n"
                                           "GhostNet = h9plugin_pkg.ghost:GhostNet\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        models = fresh_registry.registry()
    assert models["PluginNet"].__module__ == "h9plugin_pkg.models"
    assert fresh_registry.model_location("PluginNet") == "h9plugin_pkg.models"  # what a stored run re-imports
    assert "warning: model plugin entry point GhostNet = h9plugin_pkg.ghost:GhostNet" in err.getvalue()
    with pytest.raises(UserError, match="model 'GhostNet' could not be loaded: entry point GhostNet .*failed to "
                                        "load \\(ModuleNotFoundError"):
        fresh_registry.get_model("GhostNet")
    # a module location (what `models_from` holds for it) registers the same class again without a clash
    assert fresh_registry.add_models_from("h9plugin_pkg.models") == ["h9plugin_pkg.models"]
    assert fresh_registry.get_model("PluginNet") is models["PluginNet"]


def test_suite_models_from_is_relative_to_the_suite_file(tmp_path, monkeypatch, fresh_registry):
    from mdl_bench.benchmark.suite import load_suite

    files, _ = readme_example()
    suite_dir = tmp_path / "bench"
    (suite_dir / "models").mkdir(parents=True)
    (suite_dir / "models" / "DomainGatedMoE.py").write_text(files["DomainGatedMoE.py"])
    (suite_dir / "model_config.yaml").write_text(files["model_config.yaml"])
    (suite_dir / "s.yaml").write_text("models_from: models\nexpids: [DomainGatedMoE_test, MMoE_test]\n")
    monkeypatch.chdir(tmp_path)  # not the suite's folder
    suite = load_suite(str(suite_dir / "s.yaml"))
    plan = suite.plan(str(suite_dir))
    dg = plan.variants[0]
    assert (dg.model, dg.display_name, dg.group) == ("DomainGatedMoE", "DG-MoE", "MDL")
    assert dg.params["models_from"] == str((suite_dir / "models").resolve())
    assert "models_from" not in plan.variants[1].params
    (suite_dir / "bad.yaml").write_text("models_from: [nowhere]\nexpids: [MMoE_test]\n")
    with pytest.raises(UserError, match=f"models location 'nowhere' is neither a folder \\(no folder "
                                        f"{re.escape(str(suite_dir / 'nowhere'))}\\) nor an importable module"):
        load_suite(str(suite_dir / "bad.yaml")).plan()
    (suite_dir / "bad.yaml").write_text("models_from: [./nowhere]\nexpids: [MMoE_test]\n")
    with pytest.raises(UserError, match=f"models folder {re.escape(str(suite_dir / 'nowhere'))} does not exist"):
        load_suite(str(suite_dir / "bad.yaml")).plan()


def test_a_user_config_folder_is_layered_over_the_packaged_one(tmp_path):
    from mdl_bench.benchmark.config import ConfigSet

    (tmp_path / "model_config.yaml").write_text(textwrap.dedent("""
        Mine_test: {model: MMoE, dataset_id: tiny_synth}
        MMoE_test: {model: MMoE, dataset_id: tiny_synth, num_experts: 2}
    """))
    packaged, layered = ConfigSet(), ConfigSet(tmp_path)
    assert set(layered.expids) == set(packaged.expids) | {"Mine_test"}
    assert layered.base == packaged.base  # the packaged Base fills what a block leaves out
    assert layered.model_params("Mine_test")["loss"] == "binary_crossentropy"
    assert layered.models["MMoE_test"] == {"model": "MMoE", "dataset_id": "tiny_synth", "num_experts": 2}  # whole
    assert layered.model_files["MMoE_test"] == tmp_path / "model_config.yaml"
    assert layered.datasets == packaged.datasets


# ------------------------------------------------------------------------------------------- check-model fails
def test_check_model_reports_a_dead_parameter_and_a_missing_config(tiny, tmp_path, monkeypatch, fresh_registry):
    write_model(tmp_path, "DeadWeight", textwrap.dedent('''
        from torch import nn
        from mdl_bench.model_zoo import MultiDomainModel
        from mdl_bench.model_zoo.layers import DomainGroups, DomainTowers, MultiEmbedding


        class DeadWeight(MultiDomainModel):
            def __init__(self, feature_map, model_id="DeadWeight", gpu=-1, learning_rate=1e-3, embedding_dim=4,
                         **kwargs):
                super().__init__(feature_map, model_id=model_id, gpu=gpu, learning_rate=learning_rate,
                                 embedding_dim=embedding_dim, **kwargs)
                self.embedding = MultiEmbedding(feature_map, embedding_dim)
                self.towers = DomainTowers(self.num_domains, self.embedding.output_dim, [8])
                self.unused = nn.Linear(3, 3)  # never in the graph
                self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
                self.reset_parameters()
                self.model_to_device()

            def logits(self, X, domain):
                return self.towers(self.embedding.flat(X)[0], DomainGroups(domain, self.num_domains)), {}
    '''))
    write_model(tmp_path, "NoConfig")
    (tmp_path / "model_config.yaml").write_text("DeadWeight_test: {model: DeadWeight, dataset_id: tiny_synth, "
                                                "batch_size: 512, embedding_dim: 4}\n")
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli("check-model", "DeadWeight", "--models-from", ".", "--config", ".")
    assert code == 1
    assert re.search(r"^FAIL  gradients\s+unused\.weight gets no gradient", out, re.M), out
    for name in ("config", "data", "shapes", "one step", "checkpoint"):
        assert re.search(rf"^PASS  {name}\s", out, re.M), out
    assert "DeadWeight: FAILED (gradients)" in out
    code, out, _ = cli("check-model", "NoConfig", "--models-from", ".", "--config", ".")
    assert code == 1 and re.search(r"^FAIL  config\s+no expid NoConfig_test in the model configs", out, re.M)

"""The documentation: a short README whose two commands are the real ones, a CLI reference generated from the
parser (every command in it), and a product that speaks to users only (no development issue numbers)."""
from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
INSTALL_AND_RUN = ("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install . && "
                   "mdl-bench run --suite quick --jobs 2")
INSTALL_AND_TEST = ('python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && '
                    'pip install -e ".[test]" && pytest -q tests')


def docs_hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "tools" / "docs_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def all_commands(parser: argparse.ArgumentParser, prefix="mdl-bench") -> list[str]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append(f"{prefix} {name}")
                out += all_commands(sub, f"{prefix} {name}")
    return out


def test_readme_is_short_and_opens_with_the_two_real_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 150
    commands = [line.strip() for line in lines[:20] if line.startswith("    ") and line.strip()]
    assert commands[:2] == [INSTALL_AND_RUN, INSTALL_AND_TEST]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert INSTALL_AND_TEST.split("&& ", 2)[2] in ci  # CI runs the README's test command as written


def test_every_page_the_readme_and_the_nav_name_exists():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"]

    def pages(entries):
        for entry in entries:
            for value in entry.values():
                yield from pages(value) if isinstance(value, list) else [value]

    named = set(pages(nav))
    for page in named:
        assert (ROOT / "docs" / page).is_file(), page
    for link in re.findall(r"\]\((docs/[^)#]+)", (ROOT / "README.md").read_text(encoding="utf-8")):
        assert (ROOT / link).exists(), link
    for page in ("own-data.md", "datasets/movielens.md", "statistics.md", "reference/cli.md"):
        assert page in named


def test_the_cli_reference_is_generated_from_the_parser_with_every_command():
    from mdl_bench.benchmark.cli import build_parser

    hooks = docs_hooks()
    assert hooks.MARKER in (ROOT / "docs" / "reference" / "cli.md").read_text(encoding="utf-8")
    assert "tools/docs_hooks.py" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    page = hooks.on_page_markdown(f"# CLI\n\n{hooks.MARKER}\n", None, None, None)
    commands = all_commands(build_parser())
    assert {"mdl-bench run", "mdl-bench run-expid", "mdl-bench leaderboard", "mdl-bench data synth",
            "mdl-bench check-model", "mdl-bench perf", "mdl-bench analyze"} <= set(commands)
    for command in commands:
        assert re.search(rf"^## {re.escape(command)} \{{#", page, re.M), command
        assert f"usage: {command}" in page, command
    assert "--version" in page and "--quiet" in page and "--from DIR" in page


def test_no_development_issue_numbers_in_what_users_read():
    pattern = re.compile(r"[Ii]ssue ?#?[0-9]+|\(issue")
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "config").rglob("*.yaml"),
             *(ROOT / "benchmark").rglob("*.py"), *(ROOT / "model_zoo").rglob("*.py"), *(ROOT / "tools").rglob("*.py")]
    found = [f"{path.relative_to(ROOT)}:{i}" for path in files
             for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert found == []

"""MkDocs hooks (``hooks:`` in mkdocs.yml) of the documentation site.

* The CLI reference page is generated from ``mdl-bench``'s own argparse parser at every build, so it cannot drift
  from the command: a page holding the marker ``<!-- cli-reference -->`` gets it replaced by one section per
  command (subcommands of ``data`` included), its one-line description and its ``--help`` text exactly as the
  command prints it.
* Docstrings written with Sphinx roles (``:meth:`x```) show the name alone.
* The API pages: the package is installed as ``mdl_bench`` from folders of other names (``setup.py``'s
  ``package_dir``), which mkdocstrings cannot find on disk by that name; :func:`on_config` shows it the folders
  under the installed name.
"""
from __future__ import annotations

import argparse
import os
import re

try:
    from mkdocs.plugins import event_priority
except ImportError:  # imported without MkDocs (the tests render the CLI reference alone)
    def event_priority(priority):
        return lambda function: function

MARKER = "<!-- cli-reference -->"
WIDTH = "80"  # argparse wraps to $COLUMNS: a fixed width gives the same page on every machine, and fits it


def commands(parser: argparse.ArgumentParser, prefix: str = "mdl-bench") -> list[tuple[str, str, argparse.ArgumentParser]]:
    """``(command line, one-line help, parser)`` of every command and nested subcommand, in the parser's order."""
    out = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sub in action.choices.items():
            line = f"{prefix} {name}"
            out.append((line, helps.get(name, ""), sub))
            out += commands(sub, line)
    return out


def render() -> str:
    from mdl_bench.benchmark.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parser = build_parser()
        found = commands(parser)
        lines = ["| command | what it does |", "|---|---|"]
        lines += [f"| [`{c}`](#{c.replace(' ', '-')}) | {h} |" for c, h, _ in found]
        lines += ["", "## mdl-bench", "", "Options every command takes (before or after the command name):", "",
                  "```text", parser.format_help().rstrip(), "```", ""]
        for command, help_text, sub in found:
            lines += [f"## {command} {{#{command.replace(' ', '-')}}}", "", help_text, "", "```text",
                      sub.format_help().rstrip(), "```", ""]
        return "\n".join(lines)
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


@event_priority(100)  # before mkdocstrings' own `config` event, which sets its handlers up
def on_config(config):
    """MkDocs event: let mkdocstrings find the package by its installed name.

    The folders ``model_zoo/``, ``benchmark/`` and ``config/`` are installed as ``mdl_bench.*``; mkdocstrings reads
    source files by import path, so a temporary folder holding ``mdl_bench/`` with links to those folders is put
    on its search path (nothing is written into the repository)."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    root = Path(config.config_file_path).resolve().parent
    tree = Path(tempfile.mkdtemp(prefix="mdl-bench-api-"))
    atexit.register(shutil.rmtree, tree, True)
    (tree / "mdl_bench").mkdir()
    for folder in ("model_zoo", "benchmark", "config"):
        (tree / "mdl_bench" / folder).symlink_to(root / folder, target_is_directory=True)
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    python["paths"] = [str(tree)] + list(python.get("paths") or [])
    return config


def on_page_markdown(markdown: str, page, config, files) -> str:
    """MkDocs event: fill the marker."""
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown


SPHINX_ROLE = re.compile(r":(?:meth|attr|class|func|mod|data|obj):(?=<code>)")


def on_page_content(html: str, page, config, files) -> str:
    """MkDocs event: the docstrings write Sphinx roles (``:meth:`select```); show just the code name."""
    return SPHINX_ROLE.sub("", html)

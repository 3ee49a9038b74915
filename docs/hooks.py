"""MkDocs hooks: the pages that are generated at build time, so they cannot drift from the code.

- `<!-- doppel:cli -->` in a page becomes the reference of every `doppel` command and option, read
  from the Typer app (its click commands: names, types, defaults, help).
- `<!-- doppel:settings -->` becomes the fields of the settings models the Python API takes.
- every file of benchmarks/results/ becomes a page (`results/<name>.md`, the file included through
  pymdownx.snippets) or an asset (`results/<name>.png`), so figures are shown from the files the
  benchmarks wrote, never retyped.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CLI_MARK = "<!-- doppel:cli -->"
SETTINGS_MARK = "<!-- doppel:settings -->"


# pages other parts of the project write: in the nav once they exist (a missing page would fail --strict)
OPTIONAL_PAGES = [
    ("Capabilities", "The arena", "arena.md"),
    ("Security", "Trust and security", "security.md"),
    ("Security", "Model weights", "weights.md"),
]


def on_config(config):
    docs = Path(config["docs_dir"])
    nav = config["nav"]
    for section, title, page in OPTIONAL_PAGES:
        if not (docs / page).exists():
            continue
        entries = next((e[section] for e in nav if isinstance(e, dict) and section in e), None)
        if entries is None:
            entries = []
            nav.insert(next(i for i, e in enumerate(nav) if "Configuration" in e), {section: entries})
        if not any(page in e.values() for e in entries if isinstance(e, dict)):
            entries.append({title: page})
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    for path in sorted(RESULTS.iterdir()):
        if path.name == "README.md":
            continue
        if path.suffix == ".md":
            text = f'--8<-- "benchmarks/results/{path.name}"\n'
            files.append(File.generated(config, f"results/{path.name}", content=text))
        elif path.suffix in (".png", ".svg", ".csv"):
            files.append(File.generated(config, f"results/{path.name}", abs_src_path=str(path)))
    return files


def on_page_markdown(markdown, page, config, files):
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, cli_reference())
    if SETTINGS_MARK in markdown:
        markdown = markdown.replace(SETTINGS_MARK, settings_reference())
    return markdown


# ----------------------------------------------------------------------------- the CLI


def cli_reference() -> str:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "CRITICAL")
    import typer.main

    from doppel.flows.cli import app

    # Typer vendors its own click: commands and parameters are read by duck typing
    root = typer.main.get_command(app)
    out: list[str] = []

    def walk(command, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands is None or any(_options(command)):
            out.append(command_section(command, path))
        for name in sorted(subcommands or {}):
            walk(subcommands[name], [*path, name])

    for name in sorted(root.commands):
        walk(root.commands[name], ["doppel", name])
    return "\n".join(out)


def _options(command) -> list:
    return [p for p in command.params if p.param_type_name == "option" and not p.hidden and p.name != "help"]


def command_section(command, path: list[str]) -> str:
    title = " ".join(path)
    doc = (command.help or "").strip().split("\n\n")[0].replace("\n", " ")
    lines = [f"## `{title}`", "", doc, ""]
    args = [p for p in command.params if p.param_type_name == "argument"]
    if args:
        lines += [
            "Arguments: "
            + ", ".join(
                f"`{(a.metavar or a.name).upper()}`" + (f" ({cell(a.help)})" if getattr(a, "help", None) else "")
                for a in args
            ),
            "",
        ]
    options = _options(command)
    if options:
        # the records `--help` prints ("--fold <str>", "u1..u5 ... [default: u1]"), as a table
        ctx = command.context_class(command, info_name=path[-1])
        lines += ["| option | what | default / range |", "|---|---|---|"]
        for opt in options:
            flags, text = opt.get_help_record(ctx)
            match = re.search(r"\s*\[([^\[\]]*)\]\s*$", text or "")
            extra = match.group(1) if match else ""
            text = text[: match.start()] if match else text
            lines.append(f"| `{cell(flags)}` | {cell(text or '')} | {cell(extra)} |")
        lines.append("")
    return "\n".join(lines)


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# ----------------------------------------------------------------------------- the settings models


def settings_reference() -> str:
    """The settings models' fields; a field that `doppel run` takes as an option points to it instead of
    repeating its help (every option is described once)."""
    import typer.main

    from doppel.flows.cli import app
    from doppel.tasks.settings import LLMSettings, RunSettings, SimulationSettings

    run = typer.main.get_command(app).commands["run"]
    flags = {o for p in run.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)}
    parts = []
    for model, prefix in ((RunSettings, ""), (LLMSettings, "llm."), (SimulationSettings, "sim.")):
        parts += [f"### `{model.__name__}`", "", (model.__doc__ or "").strip(), ""]
        parts += ["| field | type | default | what |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            if name in ("llm", "sim"):
                continue
            kind = field.annotation
            kind = kind.__name__ if isinstance(kind, type) else str(kind).replace("typing.", "")
            default = field.get_default(call_default_factory=True)
            shown = "" if default is None else f"`{default!r}`"
            flag = "--" + name.replace("_", "-")
            # described once: a field `doppel run` takes points to its option
            what = f"as [`{flag}`](#doppel-run)" if flag in flags else (field.description or "")
            parts.append(f"| `{prefix}{name}` | {cell(kind)} | {cell(shown)} | {cell(what)} |")
        parts.append("")
    return "\n".join(parts)

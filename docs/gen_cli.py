"""Render the reference of the ``tacitbayes`` command line from its argparse parser.

Used by ``docs/hooks.py`` at build time (``make docs``), so docs/cli.md never drifts from
the parser; ``python docs/gen_cli.py`` prints the same Markdown.
"""

from __future__ import annotations

import argparse

from tacitbayes.cli import build_parser


def _cell(text: str) -> str:
    """Text that is safe inside one Markdown table cell."""
    text = " ".join(text.split())
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")


def _default(action: argparse.Action) -> str:
    value = action.default
    if value is None or value is False or value == argparse.SUPPRESS:
        return ""
    if isinstance(value, (tuple, list)):
        value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"`{value}`"


def _flags(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.metavar or action.dest}`"
    takes_value = action.nargs != 0
    metavar = action.metavar or action.dest.upper()
    if action.choices is not None and not action.metavar:
        metavar = "{" + ",".join(map(str, action.choices)) + "}"
    names = ", ".join(action.option_strings)
    return f"`{names} {metavar}`" if takes_value else f"`{names}`"


def _help(action: argparse.Action) -> str:
    text = action.help or ""
    if "%(" in text:
        params = {**vars(action), "prog": ""}
        text = text % params
    return _cell(text)


def _subcommands(parser: argparse.ArgumentParser) -> tuple[dict, dict]:
    """({name: parser}, {name: one-line help}) of the sub-commands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return dict(action.choices), helps
    return {}, {}


def render() -> str:
    """The reference: one section per sub-command with its usage and an options table."""
    parser = build_parser()
    commands, helps = _subcommands(parser)
    out = [
        "| command | what it does |",
        "|---|---|",
        *(f"| [`{name}`](#{name}) | {_cell(helps[name])} |" for name in commands),
        "",
    ]
    for name, sub in commands.items():
        out += [f"## `{name}`", "", _cell(sub.description or helps[name]), ""]
        usage = sub.format_usage().strip().removeprefix("usage: ")
        out += ["```text", usage, "```", ""]
        out += ["| option | default | meaning |", "|---|---|---|"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            out.append(f"| {_flags(action)} | {_default(action)} | {_help(action)} |")
        out.append("")
        if sub.epilog:
            out += ["```text", sub.epilog.strip("\n"), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render())

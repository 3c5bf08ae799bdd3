"""Write the README's CLI reference from the commands' own --help (tests/test_readme.py checks it).

    python scripts/gen_cli_reference.py          # rewrite the section in README.md
    python scripts/gen_cli_reference.py --check  # exit 1 when README.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

from generated import between, write_or_check  # scripts/generated.py

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- cli-reference:start -->", "<!-- cli-reference:end -->"


def reference() -> str:
    from edgedistill.cli import cli

    runner = CliRunner()
    blocks = []

    def add(path: list[str], cmd: click.Command) -> None:
        out = runner.invoke(cli, path + ["--help"], prog_name="edgedistill", terminal_width=100).output
        blocks.append(f"### `edgedistill {' '.join(path)}`\n\n```\n{out.rstrip()}\n```\n".replace("  ``", "``"))
        if isinstance(cmd, click.Group):
            for name, sub in sorted(cmd.commands.items()):
                add(path + [name], sub)

    add([], cli)
    blocks[0] = blocks[0].replace("### `edgedistill `", "### `edgedistill`")
    return "\n".join(blocks)


def main() -> int:
    new = between(README.read_text(), START, END, reference())
    return write_or_check(README, new, "README.md's CLI reference", "python scripts/gen_cli_reference.py")


if __name__ == "__main__":
    sys.exit(main())

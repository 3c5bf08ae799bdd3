"""``edgedistill run``: every stage in the registry's order, each skipped when it is up to date.

Each stage is ``fn(run: Run, *, force: bool = False, **options) -> None`` in its own module,
imported only when the stage runs (:func:`edgedistill.registry.stage_fn`), so
``edgedistill --help`` stays light.
"""

from __future__ import annotations

import logging
from typing import Any

from edgedistill.registry import STAGE_NAMES, stage_fn
from edgedistill.rundir import Run

log = logging.getLogger(__name__)


def run_pipeline(run: Run, *, force: set[str] = frozenset(), until: str | None = None,
                 options: dict[str, dict[str, Any]] | None = None) -> None:
    """Every stage in order, each skipped when up to date; stops after ``until``."""
    options = options or {}
    for stage in STAGE_NAMES:
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

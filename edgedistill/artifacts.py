"""The artifacts a run holds, read from its manifest: every finished export or quantize stage whose
files are intact. Eval, bench and report list artifacts here, without importing the exporters."""

from __future__ import annotations

from typing import Any

from edgedistill.registry import FORMAT_NAMES
from edgedistill.rundir import Run

def list_artifacts(run: Run) -> list[dict[str, Any]]:
    """Every finished, intact artifact of the run: id, format, precision, path (absolute: the model
    file, or the package directory for ortgenai), bytes, sha256, parity, and its manifest extras."""
    stages = run.read_manifest()["stages"]
    out = []
    for name, entry in stages.items():
        art = (entry.get("metrics") or {}).get("artifact")
        if not name.startswith(("export:", "quantize:")) or entry.get("status") != "done" or not art:
            continue
        if not run.outputs_intact(entry):
            continue
        outputs = entry.get("outputs", {})
        main = outputs.get(art["path"], {})
        out.append({
            **{k: v for k, v in art.items() if k not in ("path", "files")},
            "path": run.root / art["path"],
            "bytes": sum(outputs.get(f, {}).get("bytes", 0) for f in art["files"]),
            "sha256": main.get("sha256"),
            "parity": entry["metrics"].get("parity", {}),
            "stage": name,
        })
    return sorted(out, key=lambda a: (FORMAT_NAMES.index(a["format"]) if a["format"] in FORMAT_NAMES else 9,
                                      a["bytes"] * -1))

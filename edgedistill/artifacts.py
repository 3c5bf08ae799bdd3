"""The artifacts a run holds, read from its manifest: every finished export or quantize stage whose
files are intact. Eval, bench and report list artifacts here, without importing the exporters."""

from __future__ import annotations

from typing import Any

from edgedistill.registry import FORMAT_NAMES
from edgedistill.rundir import Run

def list_artifacts(run: Run, *, include_damaged: bool = False) -> list[dict[str, Any]]:
    """Every finished, intact artifact of the run: id, format, precision, path (absolute: the model
    file, or the package directory for ortgenai), bytes, sha256, parity, quant_loss (``kld``,
    ``kld_ci95``, ``top1_agreement``, ``kld_whole``, ``top1_agreement_whole``, ``calibration``) and
    its manifest extras.
    ``include_damaged``: also those whose files changed or vanished since, with ``"damaged": True``
    (bench and report must not let a broken artifact drop out of sight)."""
    stages = run.read_manifest()["stages"]
    out = []
    for name, entry in stages.items():
        art = (entry.get("metrics") or {}).get("artifact")
        if not name.startswith(("export:", "quantize:")) or entry.get("status") != "done" or not art:
            continue
        damaged = not run.outputs_intact(entry)
        if damaged and not include_damaged:
            continue
        outputs = entry.get("outputs", {})
        main = outputs.get(art["path"], {})
        out.append({
            **{k: v for k, v in art.items() if k not in ("path", "files")},
            "path": run.root / art["path"],
            "bytes": sum(outputs.get(f, {}).get("bytes", 0) for f in art["files"]),
            "sha256": main.get("sha256"),
            "parity": entry["metrics"].get("parity", {}),
            # KL divergence from the merged student at the eval answers (formats/quant_loss.py);
            # None for full-precision exports and where the run has no eval split to measure on
            "quant_loss": entry["metrics"].get("quant_loss"),
            "stage": name,
            **({"damaged": True} if damaged else {}),
        })
    return sorted(out, key=lambda a: (FORMAT_NAMES.index(a["format"]) if a["format"] in FORMAT_NAMES else 9,
                                      a["bytes"] * -1))

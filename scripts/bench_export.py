"""Wall time and peak RSS of each export and quantization of the 135M student, and each artifact's
size over the fp32 merged model.

    python scripts/bench_export.py [--model pypi:smollm2-135m-instruct] [--work DIR]

The student is imported from its GGUF into an HF directory (fp32), placed as RUN/student/merged,
and every export/quantization stage runs in its own process (so its peak RSS is its own).
Reported per artifact: the stage's wall time, the part spent in the parity check, the build
time (wall minus parity), the process's peak RSS, and bytes / fp32 merged bytes. Prints a table
and ends stdout with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, logging, sys, resource
logging.basicConfig(level=logging.WARNING)
from edgedistill.rundir import Run
from edgedistill.formats.export import export_jobs
from edgedistill.formats.jobs import run_all
from edgedistill.formats.parity import Checker
from edgedistill.formats.quantize import quantize_jobs
run, name = Run(sys.argv[1]), sys.argv[2]
par, failures = Checker(run), []
jobs = export_jobs(run, list(run.recipe.export.formats), par)
jobs += quantize_jobs(run, par, failures) if name.startswith("quantize:") else []
failures += run_all([j for j in jobs if j[0] == name], run, force=True)
own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
tools = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # converter / builder processes
print(json.dumps({"ok": not failures, "failures": failures, "peak_rss_kb": max(own, tools),
                  "python_rss_kb": own, "tool_rss_kb": tools}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="pypi:smollm2-135m-instruct")
    ap.add_argument("--work", type=Path, default=None, help="keep the run here (default: a temp dir)")
    args = ap.parse_args()

    from edgedistill import models
    from edgedistill.recipes import load_recipe_dict
    from edgedistill.rundir import Run, digest

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "prompts.jsonl").write_text('{"id": "p", "prompt": "Hi"}\n')
    recipe = load_recipe_dict({
        "task": "qa", "data": {"prompts": str(work / "prompts.jsonl")},
        "teacher": {"model": "none", "base_url": "http://127.0.0.1:9/v1"},
        "student": {"model": args.model},
        "export": {"quantize": {"onnx": ["int8", "int4"], "ortgenai": ["int4"],
                                "gguf": ["q8_0", "q4_k_m", "q4_0"]}},
    })
    run = Run.create(work / "run", recipe)
    t0 = time.time()
    # In its own process: Linux children inherit their parent's peak RSS (ru_maxrss survives
    # fork and exec), so this parent stays small and each stage's peak is its own.
    imported = work / "imported"
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from edgedistill.train.student import import_gguf; "
                    "import_gguf(Path(sys.argv[1]), Path(sys.argv[2]))",
                    str(models.resolve(args.model)), str(imported)], check=True)
    print(f"imported {args.model} in {time.time() - t0:.1f} s", file=sys.stderr)
    if run.stage_entry("merge") is None:
        stage = run.begin("merge")
        with stage:
            shutil.copytree(imported, stage.output(run.merged_dir))
    merged_bytes = sum(p.stat().st_size for p in run.merged_dir.glob("*.safetensors"))

    names = [f"export:{f}" for f in ("onnx", "ortgenai", "gguf")] + [
        "quantize:onnx-int8", "quantize:onnx-int4", "quantize:ortgenai-int4",
        "quantize:gguf-q8_0", "quantize:gguf-q4_k_m", "quantize:gguf-q4_0"]
    rows = []
    for name in names:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", CHILD, str(run.root), name],
                              capture_output=True, text=True)
        wall = time.perf_counter() - t
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        child = json.loads(lines[-1]) if lines else {"ok": False, "failures": [proc.stderr[-300:]]}
        peak = child.get("peak_rss_kb")
        entry = run.stage_entry(name) or {}
        metrics = entry.get("metrics", {})
        art = metrics.get("artifact")
        size = None
        if art:
            size = sum(digest(run.root / f)["bytes"] for f in art["files"])
        parity_s = (metrics.get("parity") or {}).get("seconds")
        rows.append({
            "stage": name, "ok": entry.get("status") == "done",
            "artifact": art["id"] if art else None,
            "process_wall_s": round(wall, 1),
            "stage_s": entry.get("seconds"),
            "parity_s": parity_s,
            "build_s": round(entry["seconds"] - parity_s, 1) if art and parity_s else None,
            "peak_rss_mb": round(peak / 1024, 1) if peak else None,
            "tool_rss_mb": round(child["tool_rss_kb"] / 1024, 1) if child.get("tool_rss_kb") else None,
            "bytes": size,
            "size_over_fp32_merged": round(size / merged_bytes, 3) if size else None,
            "greedy_token_agreement": (metrics.get("parity") or {}).get("greedy_token_agreement"),
            "error": None if child["ok"] else " | ".join(child["failures"])[-400:],
        })
        print(f"{name}: {rows[-1]}", file=sys.stderr)

    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n(peak RSS floor inherited from this process: {floor:.0f} MB)")
    print(f"fp32 merged model: {merged_bytes / 1e6:.1f} MB (safetensors)")
    print(f"{'stage':26} {'wall s':>7} {'build s':>8} {'parity s':>9} {'peak MB':>8} "
          f"{'MB':>7} {'÷fp32':>6} {'agree':>6}")
    for r in rows:
        def f(v, spec):
            return format(v, spec) if v is not None else "-"
        print(f"{r['stage']:26} {f(r['process_wall_s'], '7.1f')} {f(r['build_s'], '8.1f')} "
              f"{f(r['parity_s'], '9.1f')} {f(r['peak_rss_mb'], '8.0f')} "
              f"{f(r['bytes'] and r['bytes'] / 1e6, '7.1f')} "
              f"{f(r['size_over_fp32_merged'], '6.3f')} {f(r['greedy_token_agreement'], '6.3f')}"
              + ("  FAILED" if not r["ok"] else ""))
    print(json.dumps({"model": args.model, "merged_bytes": merged_bytes, "rows": rows}))


if __name__ == "__main__":
    main()

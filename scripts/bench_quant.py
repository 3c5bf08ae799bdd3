"""Calibrated against uncalibrated quantization on one run's merged student, format by format.

    python3 scripts/bench_quant.py RUN [--formats gguf,onnx,ortgenai] [--gguf-types q4_k_m,q3_k_s]
                                       [--text FILE] [--work DIR] [--limit N] [--answer-ms]
                                       [--set KEY=VALUE ...]

For each format's 4-bit artifact (GGUF: each type asked; ONNX and ORT GenAI: int4) and each
calibration -- none (GGUF without an importance matrix; int4 with the format's data-free
algorithm), task (the run's train split: imatrix / GPTQ) and generic text (``--text FILE``, by
default the docstrings of a fixed set of Python standard library modules, written to
WORK/generic.txt with its sha256 printed), and for GGUF "task-k" (the task's importance matrix on
the k-/i-quant tensors only, not on the 32-wide types llama.cpp falls back to; its time includes
the uncalibrated build that tells which tensors those are) -- it builds the artifact in a process
of its own and reports: the quantize step's wall time and peak RSS (calibration data, importance
matrix or GPTQ included; the process's and its tools'), the artifact's size, its KL divergence from
the merged student and top-1 agreement at the eval answers and over whole chats
(formats/quant_loss.py), and its task score on the eval split (greedy, evaluate/metrics.py
score_example against the gold answers; the teacher's reply where a record has none), beside the
merged student's; with ``--answer-ms``, also the time to a whole 32-token answer after a 64-token
prompt on every core (the bench's measurement, as the report's headline takes it).

The run is not modified: a work run (default: a temp dir) gets the merged student (hard links)
and the train/eval split, and its own exports; ``--set`` changes its recipe as the CLI's does
(say ``export.quantize.int4_lm_head=int8`` with ``'export.quantize.int4_matmul_types={}'`` for the
ORT GenAI builder's own mix, or ``'export.quantize.gguf_tensor_types={}'`` for llama.cpp's, where
the recipe sets another), so two invocations compare a setting. Prints a table
with ratios to the uncalibrated artifact and ends stdout with one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgedistill.formats.quantize import KQUANTS  # the quantize stage's third GGUF candidate

GENERIC_MODULES = ("argparse", "collections", "csv", "datetime", "email.message", "functools",
                   "http.client", "itertools", "json", "logging", "pathlib", "random", "sqlite3",
                   "statistics", "string", "subprocess", "textwrap", "threading", "unittest", "zipfile")


def short(label: str) -> str:
    """A calibration label in the table's 6 columns: none, task, text, task-k (k-quant tensors)."""
    return label.partition(":")[0].replace(KQUANTS, "-k")


def generic_text(out: Path) -> Path:
    """Generic English technical prose available on any machine: standard library docstrings."""
    import importlib
    import inspect

    parts = []
    for name in GENERIC_MODULES:
        mod = importlib.import_module(name)
        parts.append(inspect.getdoc(mod) or "")
        for _, obj in sorted(vars(mod).items()):
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and getattr(obj, "__module__", "") == name:
                parts.append(inspect.getdoc(obj) or "")
    out.write_text("\n\n".join(p for p in parts if len(p) > 200))
    return out


# --- the child: one artifact, built, measured, scored ----------------------------------------------

def child(spec: dict) -> dict:
    import logging

    logging.basicConfig(level=logging.WARNING)
    from edgedistill import runtimes
    from edgedistill.data import read_jsonl
    from edgedistill.evaluate.metrics import score_example
    from edgedistill.formats import calibration, gguf
    from edgedistill.formats.quant_loss import Reference, measure
    from edgedistill.formats.variants import (gguf_variant, int4_algo, make_imatrix, onnx_variant,
                                              ortgenai_variant)
    from edgedistill.registry import kind_of
    from edgedistill.rundir import Run, digest

    run, fmt, label, out = Run(Path(spec["run"])), spec["format"], spec["calibration"], Path(spec["out"])
    q = run.recipe.export.quantize
    shutil.rmtree(out, ignore_errors=True)  # a rerun in the same --work dir builds afresh
    out.mkdir(parents=True)
    row: dict = {"format": fmt, "precision": spec["precision"], "calibration": label}
    path = None
    if fmt != "merged":
        t0 = time.perf_counter()
        source = label.removesuffix(KQUANTS)
        cal = calibration.build(run, source, q.calibration_samples, run.recipe.train.max_length) \
            if label != "none" else None
        if fmt == "gguf":
            imx, only = None, None
            path = out / f"model-{spec['precision']}.gguf"
            if label.endswith(KQUANTS):  # which tensors: those of the uncalibrated build's types
                gguf_variant(run, spec["precision"], path, None)
                only = gguf.kquant_tensors(gguf.tensor_type_names(path))
                path.unlink()
                if only is None:
                    return {**row, "error": "no mix of k-quant and 32-wide fallback tensors here"}
            if cal is not None:
                row["imatrix"] = make_imatrix(run, cal.ids, source, out / "imatrix.gguf")
                imx = out / "imatrix.gguf"
            extra = gguf_variant(run, spec["precision"], path, imx, only=only)
            row["tensor_types"] = extra["tensor_types"]
            row["imatrix_tensors"] = extra.get("imatrix_tensors")
        else:
            algo = int4_algo(fmt, q.algo, cal is not None)
            ids = cal.select_tokens(q.gptq_max_tokens) if algo == "gptq" else None
            row["algo"] = algo
            if fmt == "onnx":
                path = onnx_variant(run, "int4", out, algo, ids)
            else:
                path = out / "int4"
                ortgenai_variant(run, path, algo, ids, out / "builder.log")
        row["quantize_s"] = round(time.perf_counter() - t0, 1)
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        tools = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        row["peak_rss_mb"] = round(max(own, tools) / 1024, 1)
        row["calibration_tokens"] = cal.tokens if cal else 0
        files = [p for p in out.iterdir() if p.name.startswith(path.name)] if path.is_file() else [path]
        row["bytes"] = sum(digest(f)["bytes"] for f in files)
        row["quant_loss"] = measure(Reference(run), kind_of(fmt), path, label)
        row["path"] = str(path)
    kind, where = ("hf", run.merged_dir) if fmt == "merged" else (kind_of(fmt), path)
    records = read_jsonl(run.eval_data)[: spec["limit"]]
    scores = []
    with runtimes.load(kind, where) as rt:
        for rec in records:
            gold = rec.get("answer")
            ref, is_reply = (str(gold), False) if gold not in (None, "") else (rec.get("response"), True)
            if not ref:
                continue
            g = rt.generate(rec["messages"], run.recipe.eval.max_new_tokens)
            scores.append(score_example(run.recipe.task, g.text, ref, is_reply, rec)["score"])
    row["score"] = round(sum(scores) / len(scores), 4) if scores else None
    row["scored"] = len(scores)
    return row


def run_child(spec: dict) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)],
                          capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**{k: spec[k] for k in ("format", "precision", "calibration")},
                "error": proc.stderr.strip()[-600:]}
    return {**json.loads(lines[-1]), "process_s": round(time.perf_counter() - t, 1)}


# --- the parent: a work run, then every combination --------------------------------------------------

def work_run(src_root: Path, work: Path, formats: list[str], overrides: list[str] = ()):
    """A run beside the source: its recipe, merged student (hard links), train/eval split, and
    exports of its own (exports are not what is measured)."""
    from edgedistill.rundir import Run

    src = Run(src_root)
    src.require("merge", needed_by="bench_quant")
    for p in (src.train_data, src.eval_data):
        if not p.exists():
            raise SystemExit(f"{src_root} has no {p.name}: run `edgedistill generate` first.")
    from edgedistill.recipes import load_recipe_dict

    recipe = load_recipe_dict(src.recipe.model_dump(mode="json"), list(overrides), "--set") \
        if overrides else src.recipe
    run = Run.create(work / "run", recipe)
    for p in (src.train_data, src.eval_data):
        run.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, run.data_dir / p.name)
    if run.stage_entry("merge") is None:
        with run.begin("merge") as stage:
            try:
                shutil.copytree(src.merged_dir, stage.output(run.merged_dir), copy_function=os.link)
            except OSError:  # another file system: copy
                shutil.rmtree(stage.output(run.merged_dir), ignore_errors=True)
                shutil.copytree(src.merged_dir, stage.output(run.merged_dir))
    code = ("import sys, logging; logging.basicConfig(level=logging.WARNING); "
            "from edgedistill.rundir import Run; from edgedistill.formats.export import export; "
            "export(Run(sys.argv[1]), formats=sys.argv[2].split(','))")
    subprocess.run([sys.executable, "-c", code, str(run.root), ",".join(formats)], check=True)
    return run


def answer_ms(fmt: str, path: str, threads: int) -> float | None:
    """Time to a whole 32-token answer after a 64-token prompt (first token + 31 more), the
    artifact alone in a process of its own, as ``edgedistill bench`` measures it."""
    from edgedistill.bench.device import KIND_OF_FORMAT, measure_in_subprocess
    from edgedistill.bench.measure import whole_answer_ms

    rec = measure_in_subprocess({"kind": KIND_OF_FORMAT[fmt], "path": path, "threads": threads,
                                 "providers": [], "gpu_layers": 0, "prompt_tokens": 64,
                                 "generate_tokens": 32, "repetitions": 3, "warmup": 1})
    if "error" in rec:
        return None
    return round(whole_answer_ms(rec, 32), 1)


def paired(row: dict, base: dict) -> str:
    """The row's answer KLD minus the uncalibrated one's, with its paired 95% interval over the
    eval chats (the quantize stage keeps a calibrated build only when that interval is below 0)."""
    from edgedistill.formats.quant_loss import paired_difference

    if row is base or not row.get("quant_loss") or not base.get("quant_loss"):
        return "-"
    d = paired_difference(row["quant_loss"], base["quant_loss"])
    return "-" if d is None else f"{d['difference']:+.5f} [{d['ci95'][0]:+.5f},{d['ci95'][1]:+.5f}]"


def ratio(a, b) -> str:
    return f"{a / b:.2f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        out = os.dup(1)
        os.dup2(2, 1)  # whatever the tools print goes to stderr; stdout carries the one JSON line
        row = child(json.loads(sys.argv[2]))
        sys.stdout.flush()
        os.write(out, (json.dumps(row) + "\n").encode())
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", type=Path, help="a run directory with a merged student and a train/eval split")
    ap.add_argument("--formats", default="gguf,onnx,ortgenai")
    ap.add_argument("--gguf-types", default="q4_k_m")
    ap.add_argument("--text", type=Path, default=None, help="generic text to calibrate on (.txt/.jsonl)")
    ap.add_argument("--work", type=Path, default=None, help="keep the work run here (default: a temp dir)")
    ap.add_argument("--limit", type=int, default=None, help="score at most N eval examples")
    ap.add_argument("--answer-ms", action="store_true",
                    help="also time a whole 32-token answer of each artifact (64-token prompt, every core)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="change the work run's recipe (as `edgedistill --set`)")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-quant-"))
    work.mkdir(parents=True, exist_ok=True)
    formats = [f for f in args.formats.split(",") if f]
    t0 = time.time()
    run = work_run(args.run.resolve(), work, formats, args.overrides)
    print(f"work run {run.root}: exports in {time.time() - t0:.0f} s", file=sys.stderr)
    text = (args.text.resolve() if args.text else generic_text(work / "generic.txt"))
    text_sha = hashlib.sha256(text.read_bytes()).hexdigest()
    labels = ["none", "task", f"text:{text}"]

    combos = [("merged", "fp32")]
    combos += [("gguf", t.lower()) for t in args.gguf_types.split(",") if "gguf" in formats and t]
    combos += [(f, "int4") for f in ("onnx", "ortgenai") if f in formats]
    rows = []
    from edgedistill.formats.quant_loss import public

    for fmt, precision in combos:
        for i, label in enumerate(["none"] if fmt == "merged" else
                                  labels + (["task" + KQUANTS] if fmt == "gguf" else [])):
            spec = {"run": str(run.root), "format": fmt, "precision": precision, "calibration": label,
                    "out": str(work / "variants" / f"{fmt}-{precision}-{i}"),
                    "limit": args.limit}
            rows.append(run_child(spec))
            if args.answer_ms and fmt != "merged" and rows[-1].get("path"):
                rows[-1]["answer_ms"] = answer_ms(fmt, rows[-1]["path"], os.cpu_count() or 1)
            print(f"{fmt}-{precision} {label}: {json.dumps(rows[-1])[:400]}", file=sys.stderr)

    merged = next((r for r in rows if r["format"] == "merged"), {})
    print(f"\nmerged student: score {merged.get('score')} on {merged.get('scored')} eval examples; "
          f"generic text: {text} (sha256 {text_sha[:16]}…)")
    head = (f"{'artifact':16} {'calib':6} {'algo':7} {'KLD':>9} {'95% CI':>19} {'÷none':>6} {'top1':>6} "
            f"{'KLDwhole':>9} {'top1w':>6} {'score':>6} {'÷merged':>8} {'MB':>7} {'÷none':>6} "
            f"{'quant s':>8} {'÷none':>6} {'RSS MB':>7} {'KLD - none [paired 95% CI]':>32}"
            + (f" {'answer ms':>9} {'÷none':>6}" if args.answer_ms else ""))
    print(head)
    for fmt, precision in combos[1:]:
        group = [r for r in rows if r["format"] == fmt and r["precision"] == precision]
        base = group[0]
        bl = base.get("quant_loss") or {}
        for r in group:
            if "error" in r:
                print(f"{fmt + '-' + precision:16} {short(r['calibration']):6} FAILED: {r['error'][-200:]}")
                continue
            ql = r.get("quant_loss") or {}

            def f(v, spec):
                return format(v, spec) if isinstance(v, (int, float)) else "-"
            ci = ql.get("kld_ci95") or [None, None]
            print(f"{fmt + '-' + precision:16} {short(r['calibration']):6} {r.get('algo', '-'):7} "
                  f"{f(ql.get('kld'), '9.5f')} [{f(ci[0], '8.5f')},{f(ci[1], '8.5f')}] "
                  f"{ratio(ql.get('kld'), bl.get('kld')):>6} {f(ql.get('top1_agreement'), '6.3f')} "
                  f"{f(ql.get('kld_whole'), '9.5f')} {f(ql.get('top1_agreement_whole'), '6.3f')} "
                  f"{f(r.get('score'), '6.3f')} {ratio(r.get('score'), merged.get('score')):>8} "
                  f"{f(r.get('bytes') and r['bytes'] / 1e6, '7.1f')} "
                  f"{ratio(r.get('bytes'), base.get('bytes')):>6} "
                  f"{f(r.get('quantize_s'), '8.1f')} {ratio(r.get('quantize_s'), base.get('quantize_s')):>6} "
                  f"{f(r.get('peak_rss_mb'), '7.0f')} {paired(r, base):>32}"
                  + (f" {f(r.get('answer_ms'), '9.0f')} {ratio(r.get('answer_ms'), base.get('answer_ms')):>6}"
                     if args.answer_ms else ""))
    for r in rows:
        if r.get("quant_loss"):
            r["quant_loss"] = public(r["quant_loss"])
    print(json.dumps({"run": str(args.run), "work": str(work), "generic_text": str(text),
                      "generic_text_sha256": text_sha, "merged_score": merged.get("score"), "rows": rows}))


if __name__ == "__main__":
    main()

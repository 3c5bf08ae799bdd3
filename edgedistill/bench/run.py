"""The ``bench`` stage: every artifact a target can run, measured by the device-side runner on this
machine or, with ``host``, on another one over SSH; RUN/bench/<target>/<artifact>.json.

Besides the runner's raw figures (see :mod:`edgedistill.bench.measure`) each artifact's file gets:

- ``measured_on``: the machine the numbers come from (arch, CPU, board, cores, RAM, accelerators,
  hostname), ``on_target``: whether that machine is the target, and ``not_on_target_because``: what
  differs (:meth:`edgedistill.hardware.Target.mismatches`: arch, core count, RAM within ±15%, the
  target's ``cpu_pattern``, its accelerators). Reaching a machine over SSH proves nothing about
  what it is. Not on the target, the figures are the host's, never the device's: ``note`` says
  ``measured_on: <host>, not the target`` and the target's figures are predictions;
- ``bytes_per_token`` (and ``bytes_per_token_basis``): what one decode step reads, from the
  artifact's tensor table (:mod:`edgedistill.bench.weights`);
- ``bandwidth_gbs``: the measuring machine's memory bandwidth at that working-set size, measured
  (numpy copy on as many threads as the decode uses), never assumed; ``dram_bandwidth_gbs`` too;
- ``roofline_fraction``: decode tokens/s p50 over the bound (bandwidth / bytes per token). A
  fraction above 1 means the bound did not hold; it is then null, and ``roofline_note`` says why;
- ``predicted_decode_tokens_per_s``: not on the target, the same bound on the target's
  ``memory_bandwidth_gbs`` (an upper bound; none when the model fits in the target's
  ``l3_cache_mb``); ``predicted_peak_rss_mb``: the host's measured peak RSS, as the target's;
- ``budgets``: the target's budgets, with its ``ram_mb`` (peak RSS over it fails).

An artifact that fails to load or run gets an ``error`` instead of figures: report's gates fail it
for this target. One whose files changed since export is still sent (and fails there, as it would
on the device), never silently left out.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgedistill.artifacts import list_artifacts
from edgedistill.errors import ArtifactError, ConfigError, StageMissing
from edgedistill.hardware import Target, load_target
from edgedistill.rundir import Run

log = logging.getLogger(__name__)


def runnable(target: Target, artifacts: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """(artifacts the target runs, with its runtime settings; ids it cannot run)."""
    picked, skipped = [], []
    for art in artifacts:
        support = target.runtime_for(art["format"], art["precision"])
        if support is None:
            skipped.append(art["id"])
            continue
        picked.append({**art, "runtime": support.runtime, "providers": support.providers,
                       "gpu_layers": support.gpu_layers})
    return picked, skipped


def on_target(target: Target, host: dict[str, Any]) -> bool:
    """Is the machine that measured the target itself? Never guessed in the target's favour."""
    return not target.mismatches(host)


def _roofline(out: dict[str, Any], tok_s: float, bw_gbs: float, per_token: int) -> None:
    bound = bw_gbs * 1e9 / per_token
    fraction = tok_s / bound
    out["roofline_bound_tokens_per_s"] = round(bound, 2)
    out["roofline_fraction"] = round(fraction, 4) if fraction <= 1 else None
    if fraction > 1:
        out["roofline_note"] = (
            f"not reported: {tok_s:.4g} tok/s is {fraction:.2f}x the bound {bound:.4g} tok/s "
            f"({bw_gbs} GB/s at the working set / {per_token} bytes per token); the bound does not "
            "hold here (the copy understates read bandwidth, or fewer bytes are read per token)")


def _predict(out: dict[str, Any], entry: dict[str, Any], target: Target, per_token: int) -> None:
    """The target's figures where the bench did not run on it: predictions, named as such."""
    out["predicted_peak_rss_mb"] = entry.get("peak_rss_mb")
    out["predicted_peak_rss_basis"] = "the host's measured peak RSS (the same runtime and weights)"
    bw, l3 = target.memory_bandwidth_gbs, target.l3_cache_mb
    if not bw:
        out["predicted_basis"] = f"no prediction: {target.name} names no memory_bandwidth_gbs"
    elif l3 and per_token <= l3 * 2**20:
        out["predicted_basis"] = (f"no prediction: {per_token} bytes per token fit in {target.name}'s "
                                  f"{l3} MB L3 cache, so its DRAM bandwidth does not bound the decode")
    else:
        out["predicted_decode_tokens_per_s"] = round(bw * 1e9 / per_token, 2)
        out["predicted_basis"] = (f"upper bound: {target.name} memory_bandwidth_gbs {bw} / "
                                  f"{per_token} bytes read per token")


def annotate(result: dict[str, Any], entry: dict[str, Any], target: Target,
             art: dict[str, Any] | None = None) -> dict[str, Any]:
    """One artifact's bench record: the runner's figures plus where, roofline and prediction.
    ``art``: the artifact as sent (its ``bytes_per_token`` and basis)."""
    host = result["host"]
    why = target.mismatches(host)
    art = art or {}
    per_token = int(art.get("bytes_per_token") or entry["bytes"])
    bw = entry.get("bandwidth") or result["bandwidth"]
    out = {**{k: v for k, v in entry.items() if k != "bandwidth"},
           "target": target.name, "target_device": target.device(), "measured_on": host,
           "on_target": not why, "not_on_target_because": why,
           "bandwidth_gbs": bw["copy_gbs"], "bandwidth_method": bw["method"],
           "dram_bandwidth_gbs": result["bandwidth"]["copy_gbs"],
           "bytes_per_token": per_token,
           "bytes_per_token_basis": art.get("bytes_per_token_basis") or "artifact size",
           "settings": result["settings"],
           "budgets": {**target.budgets.model_dump(), "ram_mb": target.ram_mb}}
    if art.get("damaged"):
        out["damaged"] = "the artifact's files changed since it was exported (sizes differ from the manifest)"
    if why:
        out["note"] = (f"measured_on: {host.get('hostname')}, not the target ({'; '.join(why)}): these "
                       f"are the host's figures; {target.name}'s are the predicted_* fields")
    if "error" in entry:
        return out
    if "concurrency" in entry:  # the sweep's levels, judged by the target's service level
        from edgedistill.bench.concurrency import users_supported

        out.update(users_supported(entry["concurrency"], target.service_level.model_dump()))
    _roofline(out, entry["decode_tokens_per_s"]["p50"], bw["copy_gbs"], per_token)
    if why:
        _predict(out, entry, target, per_token)
    return out


def device_spec(target: Target, arts: list[dict[str, Any]],
                prompts: list[list[dict]] | None = None) -> dict[str, Any]:
    settings = target.settings.model_dump(mode="json")
    keys = ("id", "format", "precision", "bytes", "providers", "gpu_layers", "bytes_per_token")
    spec = {"target": target.name, "settings": settings, "artifacts": [
        {**{k: a[k] for k in keys if k in a}, "path": str(a["path"])} for a in arts]}
    if settings.get("concurrency"):
        spec["prompts"] = prompts or []
    return spec


def _with_bytes_per_token(arts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from edgedistill.bench.weights import bytes_per_token

    out = []
    for a in arts:
        w = bytes_per_token(a["format"], a["path"]) if Path(a["path"]).exists() else \
            {"bytes_per_token": a.get("bytes") or 0, "basis": "artifact size (the file is missing)"}
        out.append({**a, "bytes_per_token": w["bytes_per_token"], "bytes_per_token_basis": w["basis"]})
    return out


def parse_levels(text: str) -> list[int]:
    """``--concurrency 1,2,4,8``: the user counts, each 1..256."""
    try:
        levels = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        levels = []
    if not levels or levels[0] < 1 or levels[-1] > 256:
        raise ConfigError(f"--concurrency {text!r}: give user counts from 1 to 256 separated by commas.",
                          hint="For example --concurrency 1,2,4,8,16.")
    return levels


def eval_prompts(run: Run, limit: int = 64) -> list[list[dict]]:
    """The messages of the run's eval prompts (the first ``limit``): what the concurrency sweep sends."""
    from edgedistill.data import read_jsonl

    if not run.eval_data.is_file():
        return []
    return [rec["messages"] for rec in read_jsonl(run.eval_data)[:limit] if rec.get("messages")]


def teacher_gguf(run: Run) -> tuple[Path | None, str]:
    """(the recipe's teacher as a local GGUF file, or None; why not). A packaged name or a path,
    relative to the recipe's folder where it is not one from here."""
    from edgedistill import models

    cfg = run.recipe.teacher
    ref = cfg.model
    if cfg.backend == "hf":
        return None, "an HF teacher needs torch, which the device side does without"
    if not (models.is_packaged(ref) or ref.lower().endswith(".gguf")):
        return None, f"the teacher is an endpoint ({ref}); its figures are not on the target"
    path = Path(models.resolve(ref)).expanduser()
    if not path.is_absolute() and not path.is_file():
        path = run.config_path.parent / path
    if not path.is_file():
        return None, f"the teacher GGUF {path} is not there" + (
            f" (`edgedistill models fetch {ref}`)" if models.is_packaged(ref) else "")
    return path, ref


def teacher_entry(run: Run, target: Target) -> tuple[dict[str, Any] | None, str]:
    """(the teacher as a bench artifact, id ``teacher``, where it is a local GGUF the target's
    llama.cpp runs; else None) and a note saying which."""
    ref = run.recipe.teacher.model
    path, why = teacher_gguf(run)
    if path is None:
        return None, f"not benched: {why}"
    if not any(r.format == "gguf" for r in target.runs):
        return None, f"not benched: {target.name} runs no GGUF"
    support = next(r for r in target.runs if r.format == "gguf")
    return ({"id": "teacher", "format": "gguf", "precision": "teacher", "path": path,
             "bytes": path.stat().st_size, "runtime": support.runtime, "providers": support.providers,
             "gpu_layers": support.gpu_layers, "model": ref},
            f"benched alike on {target.name}: {ref}")


def bench(run: Run, *, force: bool = False, target: str = "cpu-x86", host: str | None = None,
          concurrency: str | list[int] | None = None) -> None:
    """Measure every artifact ``target`` can run; on ``host`` (USER@HOST[:PORT]) over SSH if given.
    ``concurrency``: the users-at-once levels to sweep instead of the target's own ("1,2,4")."""
    tgt = load_target(target)
    concurrency = concurrency or run.recipe.bench.concurrency
    if concurrency:
        concurrency = parse_levels(concurrency) if isinstance(concurrency, str) else concurrency
        tgt = tgt.model_copy(update={"settings": tgt.settings.model_copy(update={"concurrency": concurrency})})
    target_file = Path(target) if Path(target).exists() else None
    arts = list_artifacts(run, include_damaged=True)
    if not arts:
        raise StageMissing(f"{run.root} has no exported artifacts to bench.",
                           hint=f"Run `edgedistill export {run.root}` and `edgedistill quantize {run.root}` first.")
    picked, skipped = runnable(tgt, arts)
    if not picked:
        can = "; ".join(f"{r.format}: {', '.join(r.precisions)}" for r in tgt.runs)
        raise ArtifactError(
            f"Target {tgt.name} runs none of this run's artifacts ({', '.join(a['id'] for a in arts)}).",
            hint=f"{tgt.name} runs {can}. Add one of those to export.quantize in the recipe, or pick "
                 f"another target (`--target`).")
    if skipped:
        log.info("%s cannot run %s; skipped", tgt.name, ", ".join(skipped))
    teacher, teacher_note = teacher_entry(run, tgt)  # a local GGUF teacher, measured alike
    picked += [teacher] if teacher else []
    name = f"bench:{tgt.name}"
    previous = (run.stage_entry(name) or {}).get("metrics", {})
    if previous.get("host") != host or previous.get("concurrency", []) != tgt.settings.concurrency:
        force = True
    inputs = [Path(a["path"]) for a in picked if Path(a["path"]).exists()] + ([target_file] if target_file else [])
    stage = run.begin(name, inputs=inputs, force=force)
    if stage is None:
        return
    present = _with_bytes_per_token([a for a in picked if Path(a["path"]).exists()])
    missing = [a for a in picked if not Path(a["path"]).exists()]
    spec = device_spec(tgt, present, eval_prompts(run) if tgt.settings.concurrency else None)
    with stage:
        if not present:
            result = None
        elif host:
            from edgedistill.bench.remote import run_remote

            result = run_remote(host, spec, run.root)
        else:
            from edgedistill.bench.device import format_table, run_spec

            result = run_spec(spec, progress=log.info)
            log.info("\n%s", format_table(result))
        out_dir = run.bench_dir / tgt.name
        written = {}
        entries = [(e, next(a for a in present if a["id"] == e["id"])) for e in (result or {}).get("results", [])]
        entries += [({"id": a["id"], "format": a["format"], "precision": a["precision"], "bytes": a.get("bytes"),
                      "error": f"{run.rel(Path(a['path']))} is missing (it was exported, then removed)"}, a)
                    for a in missing]
        for entry, art in entries:
            rec = annotate(result, entry, tgt, art) if result else {
                **entry, "target": tgt.name, "target_device": tgt.device(), "on_target": None,
                "budgets": {**tgt.budgets.model_dump(), "ram_mb": tgt.ram_mb}}
            rec["ssh_host"] = host
            rec["path"] = run.rel(Path(art["path"]))
            path = out_dir / f"{entry['id']}.json"
            stage.output(path).write_text(json.dumps(rec, indent=2) + "\n")
            written[entry["id"]] = rec
        stage.metrics.update(
            host=host, measured_on=(result or {}).get("host", {}).get("hostname"),
            on_target=next((r["on_target"] for r in written.values() if r.get("on_target") is not None), None),
            bandwidth_gbs=(result or {}).get("bandwidth", {}).get("copy_gbs"),
            decode_tokens_per_s_p50={k: (v.get("decode_tokens_per_s") or {}).get("p50") for k, v in written.items()},
            errors={k: v["error"] for k, v in written.items() if "error" in v}, skipped=skipped,
            concurrency=tgt.settings.concurrency, teacher=teacher_note,
            users_supported={k: v.get("users_supported") for k, v in written.items() if "users_supported" in v})
    failed = [k for k, v in written.items() if "error" in v]
    if failed:
        log.error("%d artifact(s) failed to load or run on %s -- a failed gate for this target "
                  "(`edgedistill report --check` exits 1): %s", len(failed), tgt.name,
                  "; ".join(f"{k}: {written[k]['error']}" for k in failed))
    log.info("Wrote %s", run.bench_dir / tgt.name)


def load_bench(run: Run) -> dict[str, dict[str, dict[str, Any]]]:
    """{target: {artifact id: bench record}} from RUN/bench/."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    if not run.bench_dir.is_dir():
        return out
    for tdir in sorted(p for p in run.bench_dir.iterdir() if p.is_dir()):
        for f in sorted(tdir.glob("*.json")):
            if f.name.startswith("."):
                continue
            out.setdefault(tdir.name, {})[f.stem] = json.loads(f.read_text())
    return out

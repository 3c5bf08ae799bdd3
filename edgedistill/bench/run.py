"""The ``bench`` stage: every artifact a target can run, measured by the device-side runner on this
machine or, with ``host``, on another one over SSH; RUN/bench/<target>/<artifact>.json.

Besides the runner's raw figures (see :mod:`edgedistill.bench.measure`) each artifact's file gets:

- ``measured_on``: the machine the numbers come from (arch, CPU, cores, RAM, hostname), and
  ``on_target``: whether that machine is the target (same arch, and either the target is the
  generic host target or the bench ran on the device over SSH). When it is not, the figures are
  the host's, never the device's, and the report says so;
- ``bandwidth_gbs``: the measuring machine's memory bandwidth, measured (numpy copy on as many
  threads as the decode uses), never assumed;
- ``roofline_fraction``: decode tokens/s p50 over the bandwidth bound (bandwidth / bytes read per
  token, taken as the artifact's size). Above 1 means the weights sat in cache, not DRAM;
- ``predicted_decode_tokens_per_s``: for a target that is not the measuring machine and that names
  its ``memory_bandwidth_gbs``: the same bound on the target's bandwidth -- a prediction (an upper
  bound), named as one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from edgedistill.artifacts import list_artifacts
from edgedistill.hardware import Target, load_target
from edgedistill.errors import ArtifactError, StageMissing
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


def on_target(target: Target, host: dict[str, Any], remote: bool) -> bool:
    """Is the machine that measured the target itself? Never guessed in the target's favour."""
    if host.get("arch") != target.arch:
        return False
    return remote or target.cores is None


def annotate(result: dict[str, Any], entry: dict[str, Any], target: Target, remote: bool) -> dict[str, Any]:
    """One artifact's bench record: the runner's figures plus where, roofline and prediction."""
    host = result["host"]
    here = on_target(target, host, remote)
    bw = result["bandwidth"]["copy_gbs"]
    out = {**entry, "target": target.name, "measured_on": host, "on_target": here,
           "bandwidth_gbs": bw, "bandwidth_method": result["bandwidth"]["method"],
           "bytes_per_token": entry["bytes"], "settings": result["settings"],
           "budgets": target.budgets.model_dump()}
    if "error" in entry:
        return out
    bound = bw * 1e9 / entry["bytes"]
    out["roofline_bound_tokens_per_s"] = round(bound, 2)
    out["roofline_fraction"] = round(entry["decode_tokens_per_s"]["p50"] / bound, 4)
    if not here:
        out["note"] = (f"measured on {host['hostname']} ({host['arch']}, {host['cpu']}), not on the "
                       f"{target.name} target: these are the host's figures")
        if target.memory_bandwidth_gbs:
            out["predicted_decode_tokens_per_s"] = round(target.memory_bandwidth_gbs * 1e9 / entry["bytes"], 2)
            out["predicted_basis"] = (f"upper bound: {target.name} memory_bandwidth_gbs "
                                      f"{target.memory_bandwidth_gbs} / bytes read per token (artifact size)")
    return out


def device_spec(target: Target, arts: list[dict[str, Any]]) -> dict[str, Any]:
    settings = target.settings.model_dump(mode="json")
    return {"target": target.name, "settings": settings, "artifacts": [
        {**{k: a[k] for k in ("id", "format", "precision", "bytes", "providers", "gpu_layers")},
         "path": str(a["path"])} for a in arts]}


def bench(run: Run, *, force: bool = False, target: str = "cpu-x86", host: str | None = None) -> None:
    """Measure every artifact ``target`` can run; on ``host`` (USER@HOST[:PORT]) over SSH if given."""
    tgt = load_target(target)
    target_file = Path(target) if Path(target).exists() else None
    arts = list_artifacts(run)
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
    name = f"bench:{tgt.name}"
    previous = (run.stage_entry(name) or {}).get("metrics", {})
    if previous.get("host") != host:
        force = True
    inputs = [Path(a["path"]) for a in picked] + ([target_file] if target_file else [])
    stage = run.begin(name, inputs=inputs, force=force)
    if stage is None:
        return
    spec = device_spec(tgt, picked)
    with stage:
        if host:
            from edgedistill.bench.remote import run_remote

            result = run_remote(host, spec, run.root)
        else:
            from edgedistill.bench.device import format_table, run_spec

            result = run_spec(spec, progress=log.info)
            log.info("\n%s", format_table(result))
        out_dir = run.bench_dir / tgt.name
        written = {}
        for entry in result["results"]:
            rec = annotate(result, entry, tgt, remote=bool(host))
            rec["ssh_host"] = host
            rec["path"] = run.rel(Path(next(a["path"] for a in picked if a["id"] == entry["id"])))
            path = out_dir / f"{entry['id']}.json"
            stage.output(path).write_text(json.dumps(rec, indent=2) + "\n")
            written[entry["id"]] = rec
        stage.metrics.update(
            host=host, measured_on=result["host"]["hostname"], bandwidth_gbs=result["bandwidth"]["copy_gbs"],
            decode_tokens_per_s_p50={k: (v.get("decode_tokens_per_s") or {}).get("p50") for k, v in written.items()},
            errors={k: v["error"] for k, v in written.items() if "error" in v}, skipped=skipped)
    failed = [k for k, v in written.items() if "error" in v]
    if failed:
        log.warning("bench failed for %s: %s", ", ".join(failed),
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

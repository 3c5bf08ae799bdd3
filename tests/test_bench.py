"""bench on the real SmolLM2 GGUF through real llama.cpp: the record's fields, roofline arithmetic,
honesty about where numbers come from, target filtering, and a device side without torch."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgedistill.bench import run as bench_run
from edgedistill.cli import cli
from edgedistill.recipes import load_recipe
from edgedistill.hardware import load_target
from edgedistill.errors import ArtifactError
from edgedistill.rundir import Run

from conftest import write_recipe

SETTINGS = {"threads": 1, "thread_sweep": [1, 2], "context": 128, "prompt_tokens": 8,
            "generate_tokens": 6, "repetitions": 2, "warmup": 1}


def make_run(root: Path, eval_records: list[dict] | None = None, **sections) -> Run:
    """A run whose generate stage is done, with ``eval_records`` as RUN/data/eval.jsonl."""
    recipe = load_recipe(write_recipe(root / "recipe", **sections))
    run = Run.create(root / "run", recipe)
    records = eval_records or [{"id": "e0", "messages": [{"role": "user", "content": "2+2?"}],
                                "response": "4", "answer": "4"}]
    with run.begin("generate") as stage:
        path = stage.output(run.eval_data)
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


def gguf_artifact(run: Run, gguf: Path, precision: str = "q4_1") -> dict:
    """The real GGUF registered as the quantize stage registers an artifact, as list_artifacts
    then reports it (the exporter's contract, used as is)."""
    from edgedistill.artifacts import list_artifacts

    dst = run.gguf_dir / f"model-{precision}.gguf"
    with run.begin(f"quantize:gguf-{precision}", force=True) as stage:
        tmp = stage.output(dst)
        try:
            os.link(gguf, tmp)
        except OSError:
            shutil.copy(gguf, tmp)
        stage.metrics["artifact"] = {"id": f"gguf-{precision}", "format": "gguf", "precision": precision,
                                     "path": run.rel(dst), "files": [run.rel(dst)]}
        stage.metrics["parity"] = {"note": "test fixture: the packaged GGUF, not an export"}
    return next(a for a in list_artifacts(run) if a["id"] == f"gguf-{precision}")


def onnx_artifact(run: Run, hf_dir: Path) -> dict:
    """``hf_dir`` exported to ONNX by the exporter's own optimum path, registered as export:onnx."""
    from edgedistill.artifacts import list_artifacts
    from edgedistill.formats import onnx

    with run.begin("export:onnx", force=True) as stage:
        onnx.export(hf_dir, run.onnx_dir)
        files = sorted(p for p in run.onnx_dir.iterdir() if p.is_file())
        for f in files:
            stage.record(f)
        stage.metrics["artifact"] = {"id": "onnx-fp32", "format": "onnx", "precision": "fp32",
                                     "path": run.rel(run.onnx_dir / "model.onnx"),
                                     "files": [run.rel(f) for f in files if f.name.startswith("model.onnx")]}
    return next(a for a in list_artifacts(run) if a["id"] == "onnx-fp32")


def write_target(folder: Path, name: str = "tiny-x86", arch: str | None = None, **extra) -> Path:
    """A generic host target (cores null) that runs the Q4_1 GGUF with very short settings."""
    target = {"name": name, "arch": arch or platform.machine(),
              "cores": None, "memory_bandwidth_gbs": None,
              "runs": [{"runtime": "llama.cpp", "format": "gguf", "precisions": ["q4_1", "q4_k_m"]},
                       {"runtime": "onnxruntime", "format": "onnx", "precisions": ["fp32"]}],
              "settings": SETTINGS, **extra}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(target))
    return path


@pytest.fixture(scope="module")
def benched(tmp_path_factory, smollm2_gguf):
    """One real bench of the SmolLM2 Q4_1 GGUF on a generic host target (shared by the tests)."""
    tmp = tmp_path_factory.mktemp("bench")
    run = make_run(tmp)
    art = gguf_artifact(run, smollm2_gguf)
    target = write_target(tmp)
    result = CliRunner().invoke(cli, ["bench", str(run.root), "--target", str(target)],
                                catch_exceptions=False)
    return run, art, target, result


def test_bench_writes_a_measured_record(benched):
    run, art, target, result = benched
    assert result.exit_code == 0, result.output
    rec = json.loads((run.bench_dir / "tiny-x86" / "gguf-q4_1.json").read_text())
    assert rec["runtime"] == "llama.cpp" and rec["runtime_version"]["llama_cpp_python"]
    assert "AVX" in rec["runtime_version"]["build"] or "NEON" in rec["runtime_version"]["build"]
    assert rec["threads"] == 1 and rec["repetitions"] == 2 and rec["prompt_tokens"] == 8
    assert rec["tokens_per_run"] == SETTINGS["generate_tokens"]  # end-of-turn suppressed
    assert len(rec["decode_tokens_per_s_runs"]) == 2
    for key in ("ttft_ms", "token_latency_ms", "decode_tokens_per_s"):
        assert set(rec[key]) >= {"p50", "p90", "p99"} and rec[key]["p50"] > 0
    assert rec["decode_tokens_per_s"]["p90"] <= rec["decode_tokens_per_s"]["p50"]
    assert rec["token_latency_ms"]["p50"] <= rec["token_latency_ms"]["p99"]
    assert rec["load_s"] > 0 and rec["bytes"] == art["bytes"]
    # its own process: more than the weights mapped, far less than the parent test process
    assert art["bytes"] / 2**20 < rec["peak_rss_mb"] < 4096
    assert rec["torch_imported"] is False
    assert rec["energy_per_token_j"] is None or rec["energy_per_token_j"] > 0
    assert rec["energy_note"]
    sweep = {s["threads"]: s for s in rec["thread_sweep"]}
    assert set(sweep) == {1, 2} and all(s["decode_tokens_per_s"]["p50"] > 0 for s in sweep.values())
    assert sweep[1]["decode_tokens_per_s"] == rec["decode_tokens_per_s"]  # the main run is the 1-thread point


def test_roofline_is_bandwidth_at_the_working_set_over_bytes_per_token(benched):
    from gguf import GGUFReader

    run, art, *_ = benched
    rec = json.loads((run.bench_dir / "tiny-x86" / "gguf-q4_1.json").read_text())
    assert rec["bandwidth_gbs"] > 0 and "numpy" in rec["bandwidth_method"]
    assert f"{rec['settings']['threads']} thread" in rec["bandwidth_method"]  # as many as the decode
    # SmolLM2 ties its output layer to token_embd: every tensor is read per token, metadata is not
    tensors = sum(int(t.n_bytes) for t in GGUFReader(art["path"]).tensors)
    assert rec["bytes_per_token"] == tensors < art["bytes"]
    assert "token_embd.weight is also the output layer" in rec["bytes_per_token_basis"]
    # the copy ran over a buffer as large as that working set (1 GB at most: DRAM either way)
    assert f"over a {min(tensors, 2**30) / 2**20:.3g} MB buffer" in rec["bandwidth_method"]
    bound = rec["bandwidth_gbs"] * 1e9 / rec["bytes_per_token"]
    assert rec["roofline_bound_tokens_per_s"] == pytest.approx(bound, rel=1e-3)
    fraction = rec["decode_tokens_per_s"]["p50"] / bound
    if fraction <= 1:
        assert rec["roofline_fraction"] == pytest.approx(fraction, rel=1e-3)
    else:  # never reported as a result
        assert rec["roofline_fraction"] is None and "not reported" in rec["roofline_note"]
    assert rec["measured_on"]["arch"] == platform.machine() and rec["on_target"] is True
    assert rec["not_on_target_because"] == [] and "predicted_decode_tokens_per_s" not in rec


def test_bench_is_skipped_when_up_to_date(benched):
    run, art, target, *_ = benched
    before = run.stage_entry("bench:tiny-x86")
    bench_run.bench(run, target=str(target))
    assert run.stage_entry("bench:tiny-x86") == before


def test_other_target_is_labelled_as_the_hosts_numbers(benched, tmp_path):
    run, art, *_ = benched
    rec = json.loads((run.bench_dir / "tiny-x86" / "gguf-q4_1.json").read_text())
    pi = load_target("raspberry-pi-5")
    result = {"host": rec["measured_on"], "bandwidth": {"copy_gbs": rec["bandwidth_gbs"], "method": "numpy"},
              "settings": rec["settings"]}
    entry = {k: rec[k] for k in ("id", "format", "precision", "bytes", "decode_tokens_per_s", "peak_rss_mb")}
    out = bench_run.annotate(result, entry, pi, {"bytes_per_token": rec["bytes_per_token"]})
    host = rec["measured_on"]["hostname"]
    assert out["on_target"] is False and out["note"].startswith(f"measured_on: {host}, not the target")
    assert any("not aarch64" in w or "cores, not 4" in w for w in out["not_on_target_because"])
    assert out["predicted_decode_tokens_per_s"] == pytest.approx(17.0e9 / rec["bytes_per_token"], rel=1e-3)
    assert "upper bound" in out["predicted_basis"]
    assert out["predicted_peak_rss_mb"] == rec["peak_rss_mb"]  # the host's RSS, labelled predicted
    assert out["budgets"]["ram_mb"] == 8192
    # a model that fits in the target's L3 cache has no DRAM-bandwidth prediction
    small = bench_run.annotate(result, entry, pi, {"bytes_per_token": 1_000_000})
    assert "predicted_decode_tokens_per_s" not in small and "L3 cache" in small["predicted_basis"]
    # the generic host target is whatever x86-64 machine runs the bench
    generic = load_target("cpu-x86")
    assert bench_run.on_target(generic, {"arch": "x86_64"}) and not bench_run.on_target(pi, {"arch": "x86_64"})


def test_target_that_runs_nothing_says_what_it_runs(tmp_path, smollm2_gguf):
    run = make_run(tmp_path)
    gguf_artifact(run, smollm2_gguf)
    with pytest.raises(ArtifactError) as e:
        bench_run.bench(run, target="raspberry-pi-5")  # runs q8_0, q4_k_m, q4_0; not q4_1
    assert "gguf-q4_1" in str(e.value) and "q4_k_m" in str(e.value) and "export.quantize" in str(e.value)


def test_runner_reports_a_broken_artifact_without_stopping(tmp_path):
    from edgedistill.bench.device import run_spec

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    spec = {"target": None, "settings": SETTINGS,
            "artifacts": [{"id": "gguf-bad", "format": "gguf", "precision": "q4_0", "path": str(bad)}]}
    out = run_spec(spec)
    assert "cannot load" in out["results"][0]["error"]
    assert out["host"]["arch"] == platform.machine() and out["bandwidth"]["copy_gbs"] > 0


def test_bandwidth_is_measured_on_the_decode_threads():
    from edgedistill.bench.host import measure_bandwidth

    bw = measure_bandwidth(threads=2, working_set_bytes=64 * 2**20, repeats=2)
    assert bw["threads"] == 2 and "2 thread" in bw["method"] and bw["copy_gbs"] > 0
    assert bw["buffer_mb"] == 64 and bw["working_set_bytes"] == 64 * 2**20


def test_device_side_imports_no_torch():
    code = ("import sys, runpy\n"
            "import edgedistill.bench, edgedistill.bench.measure, edgedistill.bench.device, "
            "edgedistill.bench.remote, edgedistill.runtimes\n"
            "sys.argv = ['edgedistill.bench', '--help']\n"
            "try:\n    runpy.run_module('edgedistill.bench', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "print('TORCH', 'torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "TORCH False False" in out.stdout
    assert "--spec" in out.stdout


def test_onnx_bench_runs_without_torch(tmp_path, tiny_model_dir):
    """An ONNX artifact (the tiny model, exported by optimum) benched in onnxruntime: the child
    imports no torch, as on a device, so its memory and load time are the runtime's own."""
    run = make_run(tmp_path)
    art = onnx_artifact(run, tiny_model_dir)
    bench_run.bench(run, target=str(write_target(tmp_path, name="onnx-x86")))
    rec = json.loads((run.bench_dir / "onnx-x86" / "onnx-fp32.json").read_text())
    assert rec["runtime"] == "onnxruntime" and rec["runtime_version"]["onnxruntime"]
    assert rec["torch_imported"] is False
    assert rec["tokens_per_run"] == SETTINGS["generate_tokens"] and rec["decode_tokens_per_s"]["p50"] > 0
    assert rec["bytes"] == art["bytes"] and rec["roofline_fraction"] > 0

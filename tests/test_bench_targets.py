"""bench and report on the tiny in-process model exported to real GGUF (llama.cpp's converter) and
ONNX (optimum), benched in real llama.cpp and onnxruntime: bytes read per token from the tensor
tables and bandwidth at that working set (a bound that holds), the target's context reaching
llama.cpp, a target that is not the machine, and artifacts broken after export failing their
target instead of being warned about."""

from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from edgedistill.artifacts import list_artifacts
from edgedistill.bench import run as bench_run
from edgedistill.bench.host import host_info, measure_bandwidth
from edgedistill.bench.weights import bytes_per_token
from edgedistill.cli import cli
from edgedistill.recipes import load_recipe
from edgedistill.hardware import ACCELERATORS, Target, load_target
from edgedistill.rundir import Run

from conftest import write_recipe

SETTINGS = {"threads": 1, "thread_sweep": [], "context": 512, "prompt_tokens": 8, "generate_tokens": 6,
            "repetitions": 2, "warmup": 1}
EXPORT = {"formats": ["onnx", "gguf"], "parity_prompts": 1, "parity_max_new_tokens": 4,
          "quantize": {"onnx": [], "gguf": [], "ortgenai": []}}
RUNS = [{"runtime": "llama.cpp", "format": "gguf", "precisions": ["f16"]},
        {"runtime": "onnxruntime", "format": "onnx", "precisions": ["fp32"]}]


def target_file(folder: Path, name: str, **device) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "arch": platform.machine(), "cores": None,
                                    "runs": RUNS, "settings": SETTINGS, **device}))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir) -> Run:
    """The tiny model merged, exported to GGUF f16 and ONNX fp32 (each passed its parity check);
    the recipe asks for the generic host target ``tiny-host``."""
    root = tmp_path_factory.mktemp("tiny-bench")
    host = target_file(root / "targets", "tiny-host")
    recipe = load_recipe(write_recipe(root / "recipe", export=EXPORT, targets=[str(host)],
                                      gates={"min_retention": None}))
    run = Run.create(root / "run", recipe)
    with run.begin("merge") as stage:
        shutil.copytree(tiny_model_dir, stage.output(run.merged_dir))
    from edgedistill.formats.export import export

    export(run)
    assert {a["id"] for a in list_artifacts(run)} == {"onnx-fp32", "gguf-f16"}
    return run


def copy_of(run: Run, dst: Path, overrides: list[str] = ()) -> Run:
    shutil.copytree(run.root, dst)
    return Run.open(dst, overrides=list(overrides))


def report(run: Run, *args: str):
    return CliRunner().invoke(cli, ["report", str(run.root), "--check", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def benched(exported, tmp_path_factory) -> Run:
    run = copy_of(exported, tmp_path_factory.mktemp("benched") / "run")
    bench_run.bench(run, target=run.recipe.targets[0])
    return run


def record(run: Run, target: str, aid: str) -> dict:
    return json.loads((run.bench_dir / target / f"{aid}.json").read_text())


# --- a bound that holds -----------------------------------------------------------------------


def test_bytes_per_token_count_the_output_layer_not_a_gathered_embedding(exported):
    import onnx
    from gguf import GGUFReader
    from onnx import numpy_helper

    arts = {a["id"]: a for a in list_artifacts(exported)}
    sizes = {t.name: int(t.n_bytes) for t in GGUFReader(arts["gguf-f16"]["path"]).tensors}
    assert "output.weight" in sizes  # the tiny model does not tie its output layer
    g = bytes_per_token("gguf", arts["gguf-f16"]["path"])
    assert g["bytes_per_token"] == sum(sizes.values()) - sizes["token_embd.weight"]
    assert "without token_embd.weight" in g["basis"]

    graph = onnx.load(str(arts["onnx-fp32"]["path"])).graph
    weights = {i.name: numpy_helper.to_array(i).nbytes for i in graph.initializer}
    o = bytes_per_token("onnx", arts["onnx-fp32"]["path"])
    assert o["bytes_per_token"] == sum(weights.values()) - weights["model.embed_tokens.weight"]
    assert "model.embed_tokens.weight" in o["basis"]
    # the output projection (hidden x vocab, read whole every token) is in the count
    vocab, hidden = numpy_helper.to_array(next(i for i in graph.initializer
                                               if i.name == "model.embed_tokens.weight")).shape
    assert any(numpy_helper.to_array(i).shape == (hidden, vocab) for i in graph.initializer)


def test_an_unreadable_file_falls_back_to_its_size_and_says_so(exported, tmp_path):
    src = next(a["path"] for a in list_artifacts(exported) if a["id"] == "gguf-f16")
    bad = tmp_path / "model.gguf"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    got = bytes_per_token("gguf", bad)
    assert got["bytes_per_token"] == bad.stat().st_size and got["basis"].startswith("artifact size: ")


def test_a_cache_sized_working_set_is_measured_at_cache_speed():
    small = measure_bandwidth(1, working_set_bytes=256 * 1024, repeats=3)
    dram = measure_bandwidth(1, repeats=3)
    assert small["buffer_mb"] == 1.0  # the 1 MiB floor: below it Python's overhead is timed
    assert dram["buffer_mb"] >= 256
    assert small["copy_gbs"] > dram["copy_gbs"]


def test_bench_uses_the_working_set_and_never_reports_a_fraction_above_1(benched):
    for aid in ("gguf-f16", "onnx-fp32"):
        rec = record(benched, "tiny-host", aid)
        assert rec["on_target"] is True and rec["not_on_target_because"] == []
        assert 0 < rec["bytes_per_token"] < rec["bytes"]
        assert rec["bytes_per_token"] == bytes_per_token(rec["format"], benched.root / rec["path"])["bytes_per_token"]
        # a model this small is cache resident: its bound is the bandwidth of a 1 MiB copy, not DRAM's
        assert "over a 1 MB buffer" in rec["bandwidth_method"] and rec["dram_bandwidth_gbs"] > 0
        bound = rec["bandwidth_gbs"] * 1e9 / rec["bytes_per_token"]
        assert rec["roofline_bound_tokens_per_s"] == pytest.approx(bound, rel=1e-3)
        if rec["roofline_fraction"] is None:
            assert "not reported" in rec["roofline_note"]
        else:
            assert 0 < rec["roofline_fraction"] <= 1


def test_a_fraction_above_1_is_null_with_a_note():
    out: dict = {}
    bench_run._roofline(out, tok_s=150.0, bw_gbs=10.0, per_token=100_000_000)  # bound: 100 tok/s
    assert out["roofline_fraction"] is None and "1.50x the bound" in out["roofline_note"]
    bench_run._roofline(out, tok_s=50.0, bw_gbs=10.0, per_token=100_000_000)
    assert out["roofline_fraction"] == 0.5


# --- a target means the machine ---------------------------------------------------------------


def test_the_targets_context_reaches_llama_cpp(benched):
    rec = record(benched, "tiny-host", "gguf-f16")
    assert rec["context"] == 512 and rec["n_ctx"] == 512  # llama.cpp's own n_ctx; its default is 2048
    assert record(benched, "tiny-host", "onnx-fp32")["n_ctx"] is None  # onnxruntime allocates no context


def test_a_context_too_short_for_the_bench_is_refused():
    from edgedistill.hardware import RunSettings

    with pytest.raises(ValueError, match="exceed context"):
        RunSettings(context=64, prompt_tokens=64, generate_tokens=8)


def test_host_accelerators_are_named_as_targets_name_them():
    info = host_info()
    assert isinstance(info["accelerators"], list) and set(info["accelerators"]) <= set(ACCELERATORS)
    from edgedistill.bench import host

    names = {f"cuda-{host._cuda_generation(c)}" for c in ("5.3", "6.1", "7.0", "7.5", "8.6", "8.7", "8.9",
                                                           "9.0", "10.0", "12.0")}
    names |= {f"cuda-{g}" for g in host.TEGRA_GPU.values()}
    assert names <= set(ACCELERATORS) and host._cuda_generation("8.7") == "ampere"  # Jetson Orin
    with pytest.raises(ValueError, match="unknown accelerator"):
        Target.model_validate({"name": "x", "arch": "x86_64", "runs": RUNS, "accelerators": ["tpu-v9"]})


PI5_HOST = {"hostname": "pi", "arch": "aarch64", "cpu": "Cortex-A76", "board": "Raspberry Pi 5 Model B Rev 1.0",
            "cores_logical": 4, "ram_mb": 8049, "accelerators": []}
ARM_VM = {"hostname": "vm", "arch": "aarch64", "cpu": "Neoverse-N1", "board": None, "cores_logical": 4,
          "ram_mb": 8000, "accelerators": []}
ORIN_HOST = {"hostname": "orin", "arch": "aarch64", "cpu": "Cortex-A78AE",
             "board": "NVIDIA Jetson Orin Nano Developer Kit", "cores_logical": 6, "ram_mb": 7620,
             "accelerators": ["cuda", "cuda-ampere", "jetson"]}


def test_only_the_machine_the_target_describes_is_the_target():
    pi, orin = load_target("raspberry-pi-5"), load_target("jetson-orin-nano")
    assert pi.mismatches(PI5_HOST) == [] and orin.mismatches(ORIN_HOST) == []
    # any aarch64 VM is not a Raspberry Pi 5 just because the arch matches
    assert pi.mismatches(ARM_VM) == ["CPU 'Neoverse-N1' does not match cpu_pattern 'Raspberry Pi 5|Cortex-A76'"]
    assert any("cores, not 4" in w for w in pi.mismatches({**PI5_HOST, "cores_logical": 8}))
    assert any("MB of RAM" in w for w in pi.mismatches({**PI5_HOST, "ram_mb": 4096}))  # a 4 GB Pi
    assert pi.mismatches({**PI5_HOST, "ram_mb": round(8192 * 0.86)}) == []  # within ±15%
    # the Orin without its GPU (a container that does not see it) is not the Orin
    assert orin.mismatches({**ORIN_HOST, "accelerators": []}) == [
        "no cuda-ampere (the host has no accelerator)"]
    assert orin.mismatches(PI5_HOST) != []


def test_a_mismatched_target_gets_predictions_and_fails_on_them(exported, tmp_path):
    """A target of this machine's arch that declares other cores, RAM, CPU and accelerators: the
    bench runs here, the record says where, and the report judges the target's predicted figures."""
    fake = target_file(tmp_path / "t", "fake-device", cores=(os.cpu_count() or 1) + 3, ram_mb=64,
                       cpu_pattern="Cortex-A76", accelerators=["hexagon-npu"], memory_bandwidth_gbs=0.001,
                       budgets={"min_decode_tokens_per_s": 5, "max_ttft_ms": 1})
    run = copy_of(exported, tmp_path / "run", overrides=[f"targets=[{fake}]"])
    bench_run.bench(run, target=str(fake))
    rec = record(run, "fake-device", "gguf-f16")
    host = rec["measured_on"]
    assert rec["on_target"] is False and len(rec["not_on_target_because"]) == 4
    assert rec["note"].startswith(f"measured_on: {host['hostname']}, not the target")
    reasons = " | ".join(rec["not_on_target_because"])
    assert "cores, not" in reasons and "MB of RAM, not 64 MB" in reasons and "Cortex-A76" in reasons
    assert "no hexagon-npu" in reasons
    assert rec["predicted_decode_tokens_per_s"] == pytest.approx(0.001e9 / rec["bytes_per_token"], rel=1e-2)
    assert rec["predicted_peak_rss_mb"] == rec["peak_rss_mb"] and rec["budgets"]["ram_mb"] == 64

    result = report(run)
    assert result.exit_code == 1
    out = result.output
    # the roofline bound on the target's bandwidth is below its budget: fails even as an upper bound
    assert "gguf-f16: predicted min_decode_tokens_per_s on fake-device (target budget) = " in out
    # the host's RSS, as the target's prediction, is over the target's 64 MB of RAM (onnxruntime
    # with its tokenizer holds ~100 MB here); llama.cpp with the tiny GGUF stays under it
    onnx_rss = record(run, "fake-device", "onnx-fp32")["predicted_peak_rss_mb"]
    assert onnx_rss > 64
    assert f"onnx-fp32: predicted ram_mb on fake-device (target budget) = {onnx_rss:.4g} > limit 64" in out
    data = json.loads(run.report_json.read_text())
    assert data["targets"]["fake-device"]["on_target"] is False
    assert data["targets"]["fake-device"]["accelerators"] == ["hexagon-npu"]
    # a TTFT budget cannot be predicted: listed as unchecked, never passed on the host's figure
    assert {(u["artifact"], u["gate"]) for u in data["unchecked_budgets"]} == {
        ("gguf-f16", "max_ttft_ms"), ("onnx-fp32", "max_ttft_ms")}
    md = run.report_md.read_text()
    assert f"measured_on: {host['hostname']}, not the target" in md and "predicted" in md
    # a recipe gate the host's figure would pass is indeterminate for the target, not passed
    report(run, "--set", "gates.max_ttft_ms=60000")
    unsure = json.loads(run.report_json.read_text())["gates"]["indeterminate"]
    assert {(f["artifact"], f["gate"], f["target"]) for f in unsure} == {
        ("gguf-f16", "max_ttft_ms", "fake-device"), ("onnx-fp32", "max_ttft_ms", "fake-device")}


# --- no silent bench failures -----------------------------------------------------------------


def test_an_artifact_broken_after_export_fails_its_target(exported, tmp_path):
    run = copy_of(exported, tmp_path / "run")
    arts = {a["id"]: a for a in list_artifacts(run)}
    gguf, onnx_file = arts["gguf-f16"]["path"], arts["onnx-fp32"]["path"]
    with open(gguf, "r+b") as f:  # the same size, a wrecked header: the manifest cannot tell
        f.write(b"\0" * 64)
    onnx_file.write_bytes(onnx_file.read_bytes()[:100_000])  # truncated: the manifest can
    assert [a["id"] for a in list_artifacts(run)] == ["gguf-f16"]  # intact by size
    bench_run.bench(run, target=run.recipe.targets[0])
    for aid in ("gguf-f16", "onnx-fp32"):
        rec = record(run, "tiny-host", aid)
        assert rec["error"] and "decode_tokens_per_s" not in rec
    assert record(run, "tiny-host", "onnx-fp32")["damaged"]
    assert set(run.stage_entry("bench:tiny-host")["metrics"]["errors"]) == {"gguf-f16", "onnx-fp32"}

    result = report(run)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "gguf-f16 on tiny-host: runs: failed to load or run: " in result.output
    assert "onnx-fp32 on tiny-host: runs: failed to load or run: " in result.output
    assert "onnx-fp32: intact: its files changed since export" in result.output
    data = json.loads(run.report_json.read_text())
    assert data["gates"]["verdict"] == "fail" and data["gates"]["passed"] is False
    failed = {(f["artifact"], f["gate"], f.get("target")) for f in data["gates"]["failed"]}
    assert failed == {("gguf-f16", "runs", "tiny-host"), ("onnx-fp32", "runs", "tiny-host"),
                      ("onnx-fp32", "intact", None)}
    assert data["smallest_passing"]["tiny-host"] is None


def test_a_target_asked_for_without_a_measurement_fails(exported, tmp_path):
    run = copy_of(exported, tmp_path / "run", overrides=[
        f"targets=[{exported.recipe.targets[0]}, android-arm64]"])  # android runs neither f16 nor fp32
    result = report(run)
    assert result.exit_code == 1
    assert "not benched on tiny-host, which the recipe's targets ask for" in result.output
    assert "target android-arm64 was asked for (recipe targets) and has no measurement" in result.output
    bench_run.bench(run, target=run.recipe.targets[0])
    result = report(run)
    assert "1 gate(s) failed" in result.output and "android-arm64 was asked for" in result.output
    assert "not benched on tiny-host" not in result.output
    result = report(run, "--set", "targets=[" + run.recipe.targets[0] + "]")
    assert result.exit_code == 0, result.output

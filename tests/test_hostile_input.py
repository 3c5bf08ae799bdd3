"""Hostile input (issue 15, part 8): a malformed ``--host`` never reaches ssh, credentials in
``teacher.base_url`` are refused without being echoed, names that only llama.cpp or the target
files define are checked before any path is made, temporary paths are per process, and a second
command on a run that another one holds exits 2 naming the holder's pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_recipe
from edgedistill.bench import remote
from edgedistill.cli import cli
from edgedistill.rundir import partial_path
from test_bench import SETTINGS, make_run
from test_remote_bench import ssh_env, sshd  # noqa: F401  (fixtures: a real sshd on loopback)


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def last_json(result) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- --host ----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["-oProxyCommand=touch {pwned}", "pi@host;touch {pwned}", "pi@-x",
                                  "pi@host:99999", "pi@host:", "pi host", "../../etc", "pi@$(touch {pwned})"])
def test_malformed_host_exits_2_before_ssh(host, tmp_path):
    run = make_run(tmp_path)
    pwned = tmp_path / "pwned"
    result = invoke("bench", str(run.root), "--host", host.format(pwned=pwned))
    assert result.exit_code == 2, result.output
    assert "is not USER@HOST[:PORT] or an ssh config alias" in result.stderr
    assert not pwned.exists() and not run.bench_dir.exists()
    assert not any(k.startswith("bench") for k in run.read_manifest()["stages"])


def test_good_hosts_parse_and_go_after_double_dash():
    assert remote.parse_host("pi@raspberrypi.local") == ("pi@raspberrypi.local", None)
    assert remote.parse_host("pi@192.168.1.20:2222") == ("pi@192.168.1.20", 2222)
    assert remote.parse_host("jetson") == ("jetson", None)  # an ssh config alias
    r = remote.Remote("pi@192.168.1.20:2222")
    assert r.ssh_cmd[-1] == "--" and r.scp_cmd[-1] == "--" and "-p" in r.ssh_cmd


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists(),
                    reason="needs root and /usr/sbin/sshd for a private sshd on loopback")
def test_an_ssh_config_alias_reaches_a_real_sshd(ssh_env, tmp_path):
    host, d = ssh_env
    port = host.rsplit(":", 1)[1]
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host device\n  HostName 127.0.0.1\n  Port {port}\n  User root\n\n"
                   + (d / "ssh_config").read_text())
    os.environ["EDGEDISTILL_SSH_CONFIG"] = str(cfg)  # ssh_env's monkeypatch restores it
    out = remote.run_remote("device", {"target": "x", "settings": SETTINGS, "artifacts": []}, tmp_path)
    assert out["remote"]["host"] == "device" and out["results"] == []


# --- credentials in teacher.base_url ------------------------------------------------------------


@pytest.mark.parametrize("url", ["http://me:s3cr3t-pw@127.0.0.1:9/v1",
                                 "https://api.example.com/v1?api-key=s3cr3t-pw",
                                 "https://api.example.com/v1?token=s3cr3t-pw"])
def test_credentials_in_base_url_are_refused_and_never_echoed(url, tmp_path):
    recipe = write_recipe(tmp_path / "r", teacher={"base_url": url})
    result = invoke("generate", str(recipe), "--run-dir", str(tmp_path / "run"))
    assert result.exit_code == 2, result.output
    assert "teacher.base_url" in result.stderr and "teacher.api_key_env" in result.stderr
    assert "s3cr3t" not in result.output
    assert not (tmp_path / "run").exists()

    plain = write_recipe(tmp_path / "plain")  # the same through --set, on a new and an existing run
    result = invoke("generate", str(plain), "--run-dir", str(tmp_path / "run"), "--set", f"teacher.base_url={url}")
    assert result.exit_code == 2 and "s3cr3t" not in result.output and "teacher.api_key_env" in result.stderr
    run = make_run(tmp_path / "existing")
    before = run.config_path.read_text()
    result = invoke("train", str(run.root), "--set", f"teacher.base_url={url}")
    assert result.exit_code == 2 and "s3cr3t" not in result.output
    assert run.config_path.read_text() == before


# --- names checked before any path is made --------------------------------------------------


def test_unknown_gguf_quant_type_fails_before_the_run_exists(recipe_file, tmp_path):
    result = invoke("run", str(recipe_file), "--run-dir", str(tmp_path / "run"),
                    "--set", "export.quantize.gguf=[q4_k_m, q9_z]")
    assert result.exit_code == 2, result.output
    assert "Unknown GGUF quantization type(s) in export.quantize.gguf: 'q9_z'" in result.stderr
    assert "q4_k_m" in result.stderr.split("llama.cpp names:")[1]  # the valid names, from llama.cpp
    assert not (tmp_path / "run").exists()
    # --until before quantize: not needed, not checked
    ok_until = invoke("run", str(recipe_file), "--run-dir", str(tmp_path / "run2"), "--until", "generate",
                      "--set", "export.quantize.gguf=[q9_z]", "--set", "teacher.max_retries=0")
    assert "quantization type" not in ok_until.output


def test_an_int4_block_size_the_model_cannot_take_fails_before_the_run_exists(tmp_path, tiny_model_dir):
    """The tiny model's hidden size is 64: a block of 64 is one per row, an odd count, which
    onnxruntime's 4-bit zero-point packing cannot reshape; 48 is no power of two."""
    recipe = write_recipe(tmp_path / "recipe", student={"model": str(tiny_model_dir)})
    for size, why in (("64", "an even number of times"), ("48", "not a power of two")):
        result = invoke("run", str(recipe), "--run-dir", str(tmp_path / "run"),
                        "--set", f"export.quantize.int4_block_size={size}")
        assert result.exit_code == 2, result.output
        assert f"export.quantize.int4_block_size {size}" in result.stderr and why in result.stderr
        assert "Valid block sizes here: 16, 32" in result.stderr
        assert not (tmp_path / "run").exists()
    # nothing int4 asked: the size is not checked
    off = invoke("run", str(recipe), "--run-dir", str(tmp_path / "run2"), "--until", "generate",
                 "--set", "export.quantize.int4_block_size=64", "--set", "export.quantize.onnx=[int8]",
                 "--set", "export.quantize.ortgenai=[]", "--set", "teacher.max_retries=0")
    assert "export.quantize.int4_block_size 64" not in off.output and "teacher endpoint" in off.output


def test_valid_int4_block_sizes_tile_each_row_an_even_number_of_times():
    from edgedistill.formats.onnx import valid_block_sizes

    assert valid_block_sizes([576, 1536]) == [16, 32]  # SmolLM2-135M: 576 / 64 = 9 blocks a row
    assert valid_block_sizes([896, 4864]) == [16, 32, 64]  # Qwen2.5-0.5B: 896 / 128 = 7 blocks a row
    assert valid_block_sizes([2048, 8192]) == [16, 32, 64, 128, 256]


def test_quantize_checks_the_type_before_touching_the_run(tmp_path):
    run = make_run(tmp_path)
    before = run.config_path.read_text()
    result = invoke("quantize", str(run.root), "--set", "export.quantize.gguf=[Q4_K_M, iq9_nope]")
    assert result.exit_code == 2, result.output
    assert "'iq9_nope'" in result.stderr and "Q4_K_M" not in result.stderr.split("llama.cpp names:")[0]
    assert run.config_path.read_text() == before and not run.export_dir.exists()


def test_unknown_target_and_format_fail_before_the_run_exists(recipe_file, tmp_path):
    result = invoke("run", str(recipe_file), "--run-dir", str(tmp_path / "run"), "--set", "targets=[pi-zero]")
    assert result.exit_code == 2 and "pi-zero" in result.stderr and "raspberry-pi-5" in result.stderr
    assert not (tmp_path / "run").exists()
    result = invoke("run", str(recipe_file), "--run-dir", str(tmp_path / "run"), "--set", "export.formats=[tflite]")
    assert result.exit_code == 2 and "export.formats" in result.stderr
    assert not (tmp_path / "run").exists()
    run = make_run(tmp_path / "r2")
    result = invoke("export", str(run.root), "--format", "tflite")
    assert result.exit_code == 2 and "tflite" in result.stderr and not run.export_dir.exists()
    assert last_json(result)["exit_code"] == 2


# --- temporary paths and the run lock ---------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporary_paths_are_per_process_and_stale_ones_go(tmp_path):
    run = make_run(tmp_path)
    final = run.data_dir / "train.jsonl"
    stale = final.with_name(f".train.jsonl.{_dead_pid()}.partial")
    stale.write_text("left by a killed process")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = final.with_name(f".train.jsonl.{sleeper.pid}.partial")
        live.write_text("another process, still writing")
        with run.begin("generate", force=True) as stage:
            tmp = stage.output(final)
            assert tmp == partial_path(final) and tmp.name == f".train.jsonl.{os.getpid()}.partial"
            tmp.write_text("{}\n")
        assert final.read_text() == "{}\n" and not tmp.exists()
        assert not stale.exists() and live.read_text() == "another process, still writing"
    finally:
        sleeper.kill()
        sleeper.wait()


HOLD = """
import sys, time
from edgedistill.rundir import Run
with Run(sys.argv[1]).locked("edgedistill train " + sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_command_on_a_held_run_exits_2_naming_the_pid(tmp_path, monkeypatch):
    run = make_run(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run.root)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = run.read_manifest()
        for args in (["report", str(run.root)], ["train", str(run.root), "--set", "train.max_steps=1"]):
            result = invoke(*args)
            assert result.exit_code == 2, result.output
            assert f"is in use by another edgedistill command: pid {holder.pid}" in result.stderr
            assert f"`edgedistill train {run.root}`" in result.stderr
            assert "kill" in result.stderr and last_json(result)["exit_code"] == 2
        assert run.read_manifest() == before and not run.report_json.exists()
        assert "max_steps: 1" not in run.config_path.read_text()
        with monkeypatch.context() as m:  # another rank of a torchrun/accelerate launch: rank 0 holds it
            m.setenv("RANK", "1")
            assert invoke("report", str(run.root)).exit_code in (0, 1)
    finally:
        holder.kill()
        holder.wait()
    t0 = time.monotonic()
    assert invoke("report", str(run.root)).exit_code in (0, 1)  # the lock died with its process
    assert invoke("report", str(run.root)).exit_code in (0, 1)  # and a finished command let it go
    assert time.monotonic() - t0 < 60

"""Remote bench against a real OpenSSH server on 127.0.0.1, started by the test with its own host
key, user key and known_hosts: the runner and the real GGUF travel over scp, llama.cpp runs
behind sshd, the JSON comes back; an unknown host key is refused."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgedistill.bench import remote
from edgedistill.bench import run as bench_run
from edgedistill.errors import EndpointError

from test_bench import SETTINGS, gguf_artifact, make_run, write_target

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"

pytestmark = pytest.mark.skipif(
    not Path(SSHD).exists() or os.geteuid() != 0,
    reason="needs /usr/sbin/sshd (Debian: apt-get install -y openssh-server; scripts/install.sh "
           "does it) and root, to run a private sshd on loopback",
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1:PORT; yields (host string, ssh_config path, folder)."""
    d = tmp_path_factory.mktemp("sshd")
    host_key, user_key = _keygen(d / "host_ed25519"), _keygen(d / "user_ed25519")
    (d / "authorized_keys").write_text((d / "user_ed25519.pub").read_text())
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host_key}
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp internal-sftp
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=subprocess.DEVNULL, stderr=open(d / "sshd.log", "w"))
    deadline = time.time() + 15
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert proc.poll() is None, (d / "sshd.log").read_text()
            time.sleep(0.1)
    key_type, key = (d / "host_ed25519.pub").read_text().split()[:2]
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {key_type} {key}\n")
    (d / "ssh_config").write_text(f"""Host *
  IdentityFile {user_key}
  IdentitiesOnly yes
  UserKnownHostsFile {d}/known_hosts
  GlobalKnownHostsFile /dev/null
""")
    yield f"root@127.0.0.1:{port}", d
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def ssh_env(sshd, monkeypatch, tmp_path):
    host, d = sshd
    monkeypatch.setenv("EDGEDISTILL_SSH_CONFIG", str(d / "ssh_config"))
    monkeypatch.setenv("EDGEDISTILL_REMOTE_PYTHON", sys.executable)  # the project's interpreter
    monkeypatch.setenv("EDGEDISTILL_REMOTE_DIR", str(tmp_path / "device-home"))
    return host, d


def test_remote_bench_over_real_sshd(ssh_env, tmp_path, smollm2_gguf):
    host, d = ssh_env
    run = make_run(tmp_path / "r")
    art = gguf_artifact(run, smollm2_gguf)
    target = write_target(tmp_path, settings={**SETTINGS, "thread_sweep": []})
    bench_run.bench(run, target=str(target), host=host)

    rec = json.loads((run.bench_dir / "tiny-x86" / "gguf-q4_1.json").read_text())
    assert rec["ssh_host"] == host and rec["on_target"] is True
    assert rec["decode_tokens_per_s"]["p50"] > 0 and rec["ttft_ms"]["p50"] > 0
    assert rec["tokens_per_run"] == SETTINGS["generate_tokens"] and rec["torch_imported"] is False
    # the artifact and the runner really went to the "device" folder
    device = next((tmp_path / "device-home").iterdir())
    copied = next(device.rglob("model-q4_1.gguf"))
    assert copied.stat().st_size == art["bytes"]
    assert (device / "pkg" / "edgedistill" / "bench" / "__main__.py").is_file()
    assert json.loads((device / "files.json").read_text())  # what the device already has

    # a second run finds the artifact there (same sha256) and copies only the runner
    spec = bench_run.device_spec(bench_run.load_target(str(target)), bench_run.runnable(
        bench_run.load_target(str(target)), [art])[0])
    again = remote.run_remote(host, spec, run.root)
    assert again["remote"]["copied_files"] == 0
    assert again["results"][0]["id"] == "gguf-q4_1"


def test_unknown_host_key_is_refused(ssh_env, tmp_path):
    host, d = ssh_env
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    cfg = tmp_path / "ssh_config"
    cfg.write_text((d / "ssh_config").read_text().replace(f"{d}/known_hosts", str(empty)))
    os.environ["EDGEDISTILL_SSH_CONFIG"] = str(cfg)  # monkeypatch restores it after the test
    with pytest.raises(EndpointError) as e:
        remote.run_remote(host, {"target": "x", "settings": SETTINGS, "artifacts": []}, tmp_path)
    assert "known_hosts" in str(e.value) and "ssh-keyscan -p" in str(e.value)


def test_parse_host():
    assert remote.parse_host("pi@raspberrypi.local") == ("pi@raspberrypi.local", None)
    assert remote.parse_host("root@127.0.0.1:2222") == ("root@127.0.0.1", 2222)


def test_an_onnx_artifact_travels_with_its_data_and_tokenizer_only(tmp_path):
    for name in ("model.onnx", "model.onnx_data", "model_int4.onnx", "tokenizer.json", "config.json",
                 ".model.onnx.partial"):
        (tmp_path / name).write_text("x")
    names = lambda art: [p.name for p in remote._files_of(art, tmp_path)[1]]  # noqa: E731
    assert names({"format": "onnx", "path": tmp_path / "model.onnx"}) == [
        "config.json", "model.onnx", "model.onnx_data", "tokenizer.json"]
    assert names({"format": "onnx", "path": tmp_path / "model_int4.onnx"}) == [
        "config.json", "model_int4.onnx", "tokenizer.json"]
    assert names({"format": "gguf", "path": tmp_path / "model.onnx"}) == ["model.onnx"]


def test_reaching_a_host_over_ssh_does_not_make_it_the_target(ssh_env, tmp_path, smollm2_gguf):
    """The sshd's machine, reached over real SSH, judged against a target of its own arch that
    declares another machine (a Raspberry Pi 5's cores, RAM and CPU): not on the target, the host's
    figures labelled as such, the target's predicted; the same bench against a target describing
    the machine as it is counts as on the target."""
    import re

    from click.testing import CliRunner

    from edgedistill.bench.host import host_info
    from edgedistill.cli import cli

    host, d = ssh_env
    run = make_run(tmp_path / "r")
    gguf_artifact(run, smollm2_gguf)
    me = host_info()
    settings = {**SETTINGS, "thread_sweep": []}
    pi_like = write_target(tmp_path, name="pi-like", cores=4 if me["cores_logical"] != 4 else 8, ram_mb=8192,
                           cpu_pattern="Raspberry Pi 5|Cortex-A76", memory_bandwidth_gbs=17.0,
                           l3_cache_mb=2, settings=settings,
                           budgets={"min_decode_tokens_per_s": 1, "max_ttft_ms": 1})
    bench_run.bench(run, target=str(pi_like), host=host)
    rec = json.loads((run.bench_dir / "pi-like" / "gguf-q4_1.json").read_text())
    assert rec["ssh_host"] == host and rec["on_target"] is False
    assert rec["decode_tokens_per_s"]["p50"] > 0  # it ran there
    reasons = " | ".join(rec["not_on_target_because"])
    assert "cores, not" in reasons and "does not match cpu_pattern 'Raspberry Pi 5|Cortex-A76'" in reasons
    assert rec["note"].startswith(f"measured_on: {rec['measured_on']['hostname']}, not the target")
    assert rec["predicted_decode_tokens_per_s"] == pytest.approx(17.0e9 / rec["bytes_per_token"], rel=1e-2)
    # the host's 1 ms TTFT is never a pass for the device's budget: unchecked, not passed
    invoke = CliRunner().invoke(cli, ["report", str(run.root), "--set", "gates.min_retention=null",
                                      "--set", f"targets=[{pi_like}]"], catch_exceptions=False)
    assert invoke.exit_code == 0, invoke.output
    data = json.loads(run.report_json.read_text())
    assert data["targets"]["pi-like"]["on_target"] is False
    assert {u["gate"] for u in data["unchecked_budgets"]} == {"min_decode_tokens_per_s", "max_ttft_ms"}
    assert "measured_on: " in run.report_md.read_text()

    same = write_target(tmp_path, name="this-machine", cores=me["cores_logical"], ram_mb=me["ram_mb"],
                        cpu_pattern=re.escape(me["cpu"]), settings=settings)
    bench_run.bench(run, target=str(same), host=host)
    rec = json.loads((run.bench_dir / "this-machine" / "gguf-q4_1.json").read_text())
    assert rec["on_target"] is True and rec["not_on_target_because"] == [] and "note" not in rec


def test_remote_bench_sweeps_concurrency_over_real_sshd(ssh_env, tmp_path, tiny_gguf):
    """``bench --host --concurrency``: the sweep runs on the device by the same torch-free runner,
    for the artifact and a local GGUF teacher alike, with the run's eval prompts sent along."""
    from test_concurrency import EVAL, target

    host, d = ssh_env
    run = make_run(tmp_path / "r", EVAL, teacher={"backend": "gguf", "model": str(tiny_gguf), "base_url": None})
    gguf_artifact(run, tiny_gguf, "f32")
    easy = target(tmp_path, "easy-x86", max_ttft_ms_p95=600000, min_tokens_per_s_per_user=0.5)
    bench_run.bench(run, target=str(easy), host=host, concurrency="1,2")

    for aid in ("gguf-f32", "teacher"):
        rec = json.loads((run.bench_dir / "easy-x86" / f"{aid}.json").read_text())
        sweep = rec["concurrency"]
        assert rec["ssh_host"] == host and sweep["torch_imported"] is False
        assert sweep["engine"] == "continuous batching" and sweep["prompt_source"] == "the run's eval prompts"
        assert [lv["users"] for lv in sweep["levels"]] == [1, 2]
        assert all(lv["errors"] == 0 and lv["output_tokens"] > 0 for lv in sweep["levels"])
        assert rec["users_supported"] == 2 and rec["service_level"]["max_ttft_ms_p95"] == 600000
    device = next((tmp_path / "device-home").iterdir())
    sent = json.loads((device / "spec.json").read_text())
    assert sent["settings"]["concurrency"] == [1, 2] and len(sent["prompts"]) == len(EVAL)
    assert (device / "pkg" / "edgedistill" / "serve" / "engine.py").is_file()

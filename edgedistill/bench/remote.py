"""bench on another machine over SSH, with the system ``ssh``/``scp`` (so ~/.ssh/config, agents
and jump hosts work as the user has them) and host keys always checked
(``StrictHostKeyChecking=yes``, ``BatchMode=yes``: an unknown host fails, nothing prompts).

What happens: the edgedistill sources (no torch needed: the device side imports only numpy,
psutil and the runtimes, and for ``--concurrency`` fastapi and uvicorn, which serve each artifact
on the device's loopback as ``edgedistill serve`` does) and the artifacts are copied to
``~/.cache/edgedistill/remote-bench/<run>`` on the device (an artifact already there with the same
sha256 is not copied again), the runner ``python -m edgedistill.bench --spec spec.json`` runs
there, and its last stdout line -- one JSON object -- is the result.

Environment: ``EDGEDISTILL_SSH_CONFIG`` (an ssh_config file passed with ``-F``),
``EDGEDISTILL_REMOTE_PYTHON`` (the device's interpreter, default ``python3``; it needs the
``[bench]`` extra's packages), ``EDGEDISTILL_REMOTE_DIR`` (the working folder there, default
``~/.cache/edgedistill/remote-bench``).

``--host`` is ``USER@HOST[:PORT]``, ``HOST[:PORT]`` or an alias from the ssh config, checked before
anything runs (never an option: it cannot start with ``-``) and passed after ``--``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shlex
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import edgedistill
from edgedistill.errors import ConfigError, EndpointError
from edgedistill.rundir import digest

log = logging.getLogger(__name__)

REMOTE_ROOT = ".cache/edgedistill/remote-bench"


class Remote:
    def __init__(self, host: str):
        self.dest, self.port = parse_host(host)
        self.host = host
        self.python = os.environ.get("EDGEDISTILL_REMOTE_PYTHON", "python3")
        common = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=20"]
        config = os.environ.get("EDGEDISTILL_SSH_CONFIG")
        if config:
            common = ["-F", config] + common
        self.ssh_cmd = ["ssh", *common] + (["-p", str(self.port)] if self.port else []) + ["--"]
        self.scp_cmd = ["scp", "-q", *common] + (["-P", str(self.port)] if self.port else []) + ["--"]

    def ssh(self, command: str, *, check: bool = True, capture: bool = True,
            timeout: float | None = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run([*self.ssh_cmd, self.dest, command], text=True, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE if capture else None)
        if check and proc.returncode != 0:
            self._fail(proc.returncode, proc.stderr or "", command)
        return proc

    def put(self, local: Path, remote: str) -> None:
        user, at, hostname = self.dest.rpartition("@")
        dest = f"{user}{at}[{hostname}]" if ":" in hostname else self.dest  # an IPv6 address
        # an absolute local path: scp would take a relative one with a ':' for a remote one
        proc = subprocess.run([*self.scp_cmd, str(Path(local).resolve()), f"{dest}:{remote}"],
                              text=True, capture_output=True)
        if proc.returncode != 0:
            self._fail(proc.returncode, proc.stderr, f"scp {local}")

    def _fail(self, code: int, stderr: str, what: str) -> None:
        err = stderr.strip()
        if "Host key verification failed" in err or "No ED25519 host key is known" in err \
                or "host key" in err.lower() and "known" in err.lower():
            port = f"-p {self.port} " if self.port else ""
            hostname = self.dest.split("@")[-1]
            raise EndpointError(
                f"The host key of {self.host} is not in known_hosts (or changed); refusing to connect.",
                hint=f"Check the key's fingerprint on the device, then add it: "
                     f"`ssh-keyscan {port}{hostname} >> ~/.ssh/known_hosts`.\nssh said: {err}")
        if code == 255:
            raise EndpointError(f"Cannot reach {self.host} over SSH: {err or 'exit code 255'}.",
                                hint="Check the address, the port and that your key is in the "
                                     "device's authorized_keys (`ssh-copy-id USER@HOST`).")
        raise EndpointError(f"`{what}` failed on {self.host} (exit {code}): {err[-2000:]}")


_USER = r"[A-Za-z0-9_][A-Za-z0-9._-]*"
_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]*"  # a host name, an IPv4 address or an ssh config alias
_HOST = re.compile(rf"^(?:(?P<user>{_USER})@)?(?P<host>{_NAME}|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{{1,5}}))?$")


def parse_host(host: str) -> tuple[str, int | None]:
    """``user@host[:port]``, ``host[:port]`` or an ssh config alias → (``user@host``, port or
    None). Anything else -- an option (``-oProxyCommand=...``), spaces, shell characters, a path,
    a port out of range -- is a ConfigError (exit 2)."""
    m = _HOST.match(host or "")
    port = int(m["port"]) if m and m["port"] else None
    if not m or (port is not None and not 0 < port < 65536):
        raise ConfigError(
            f"--host {host!r} is not USER@HOST[:PORT] or an ssh config alias.",
            hint="Give e.g. pi@raspberrypi.local, pi@192.168.1.20:2222 or a Host alias from "
                 "~/.ssh/config (letters, digits, '.', '_' and '-'; it cannot start with '-').")
    dest = (f"{m['user']}@" if m["user"] else "") + m["host"].strip("[]")
    return dest, port


def _package_tar() -> bytes:
    """The edgedistill sources as a tar (Python files and bundled YAML; no caches)."""
    root = Path(edgedistill.__file__).parent
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(root.rglob("*")):
            if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".yaml", ".jsonl"):
                tar.add(p, arcname=f"edgedistill/{p.relative_to(root).as_posix()}")
    return buf.getvalue()


def _files_of(art: dict[str, Any], run_root: Path) -> tuple[Path, list[Path]]:
    """(folder, files that travel): a GGUF alone; an ONNX graph with its external data and the
    tokenizer/config files beside it (not the other variants); an ORT GenAI package whole."""
    path = Path(art["path"])
    if art["format"] == "gguf":
        return path.parent, [path]
    if path.is_dir():
        return path, sorted(q for q in path.rglob("*") if q.is_file())
    return path.parent, sorted(q for q in path.parent.iterdir() if q.is_file() and not q.name.startswith(".")
                               and (q.name.startswith(path.name) or not q.name.startswith("model")))


def _remote_rel(path: Path, run_root: Path) -> str:
    try:
        return "artifacts/" + path.resolve().relative_to(run_root).as_posix()
    except ValueError:
        return "artifacts/external/" + hashlib.sha256(str(path.parent).encode()).hexdigest()[:8] + "/" + path.name


def run_remote(host: str, spec: dict[str, Any], run_root: Path) -> dict[str, Any]:
    """Copy the runner and the artifacts to ``host``, run the spec there, return its JSON."""
    r = Remote(host)
    remote_root = os.environ.get("EDGEDISTILL_REMOTE_DIR", REMOTE_ROOT)
    label = re.sub(r"[^A-Za-z0-9._-]", "_", run_root.name)  # the run's name, safe in a remote path
    base = f"{remote_root}/{label}-{hashlib.sha256(str(run_root).encode()).hexdigest()[:8]}"
    # the concurrency sweep serves each artifact on the device's loopback: fastapi and uvicorn too
    needs = "numpy, psutil" + (", fastapi, uvicorn" if spec["settings"].get("concurrency") else "")
    probe = r.ssh(f"mkdir -p {shlex.quote(base)} && cd {shlex.quote(base)} && pwd && "
                  f"{shlex.quote(r.python)} -c 'import sys, {needs}; print(sys.version.split()[0])'",
                  check=False)
    if probe.returncode != 0:
        if probe.returncode == 255:
            r._fail(255, probe.stderr, "ssh")
        raise EndpointError(
            f"{host} has no usable Python for the bench runner ({r.python}): {probe.stderr.strip()[-500:]}",
            hint="Install the device side there: `pip install 'edgedistill[bench]'` (no torch), or set "
                 f"EDGEDISTILL_REMOTE_PYTHON to an interpreter that has {needs} and the runtimes.")
    remote_dir, version = probe.stdout.split()[-2:]
    log.info("%s: Python %s, working in %s", host, version, remote_dir)

    known = r.ssh(f"cat {shlex.quote(base)}/files.json 2>/dev/null || echo '{{}}'").stdout
    try:
        remote_files: dict[str, str] = json.loads(known.strip() or "{}")
    except json.JSONDecodeError:
        remote_files = {}
    root = Path(run_root).resolve()
    remote_spec = json.loads(json.dumps(spec))
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "edgedistill-src.tar.gz"
        tar.write_bytes(_package_tar())
        r.put(tar, f"{base}/edgedistill-src.tar.gz")
        r.ssh(f"cd {shlex.quote(base)} && rm -rf pkg && mkdir pkg && "
              f"{shlex.quote(r.python)} -m tarfile -e edgedistill-src.tar.gz pkg")
        copied = 0
        for art, rart in zip(spec["artifacts"], remote_spec["artifacts"]):
            folder, files = _files_of(art, root)
            for f in files:
                rel = _remote_rel(f, root)
                sha = digest(f)["sha256"]
                if remote_files.get(rel) != sha:
                    r.ssh(f"mkdir -p {shlex.quote(base + '/' + str(Path(rel).parent))}")
                    log.info("copying %s to %s (%.1f MB)", f.name, host, f.stat().st_size / 1e6)
                    r.put(f, f"{base}/{rel}")
                    remote_files[rel] = sha
                    copied += 1
            rart["path"] = f"{remote_dir}/{_remote_rel(Path(art['path']), root)}"
        (Path(tmp) / "files.json").write_text(json.dumps(remote_files))
        (Path(tmp) / "spec.json").write_text(json.dumps(remote_spec))
        r.put(Path(tmp) / "files.json", f"{base}/files.json")
        r.put(Path(tmp) / "spec.json", f"{base}/spec.json")
    log.info("copied %d file(s); running the bench on %s", copied, host)
    proc = r.ssh(f"cd {shlex.quote(base)} && PYTHONPATH={shlex.quote(remote_dir)}/pkg "
                 f"{shlex.quote(r.python)} -m edgedistill.bench --spec spec.json",
                 capture=False, check=False, timeout=None)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise EndpointError(f"The bench runner failed on {host} (exit {proc.returncode}).",
                            hint="Its output is above; run it by hand there with "
                                 f"`cd {remote_dir} && PYTHONPATH=pkg {r.python} -m edgedistill.bench --spec spec.json`.")
    for line in lines[:-1]:
        log.info("%s", line)
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        raise EndpointError(f"The bench runner on {host} did not end with a JSON line: {lines[-1][:300]}") from None
    result["remote"] = {"host": host, "dir": remote_dir, "python": version, "copied_files": copied}
    return result

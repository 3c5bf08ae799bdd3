"""Importance matrices for llama.cpp's quantizer, collected from the merged student on the
calibration samples.

What llama.cpp's ``llama-imatrix`` tool measures, measured here on the HF model llama.cpp's GGUF
was converted from: for every weight a matrix multiplication reads, the sum over tokens of each
input column's squared activation, and the token count (their ratio is what the quantizer
weighs each column's rounding error by). Forward pre-hooks on every ``nn.Linear`` of the merged
model see those inputs; gguf-py's tensor name map (the converter's own copy, run as a subprocess
like the converter) turns module names into GGUF tensor names, and the tied LM head becomes
``output.weight``, or ``token_embd.weight`` when the GGUF has no output tensor.

Why not build ``llama-imatrix`` from the pinned source: the student is already an HF model in
this process's reach, collection over the train split takes seconds, and no second llama.cpp
build (minutes on 2 cores, plus a tool binary per platform) is needed. The file is written in the
format that tool writes (tools/imatrix/imatrix.cpp, ``save_imatrix``): a GGUF with
``general.type = imatrix``, ``imatrix.datasets``, ``imatrix.chunk_count``, ``imatrix.chunk_size``
and, per weight, ``<name>.in_sum2`` (F32, one row per expert) and ``<name>.counts`` (F32), so
``llama-quantize --imatrix`` and ``llama-imatrix --in-file`` read it. One chunk here is one
calibration sample; chunk_size is the longest sample.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgedistill.errors import ArtifactError

if TYPE_CHECKING:
    import numpy as np

    from edgedistill.formats.gguf import Converter

log = logging.getLogger(__name__)


def collect(merged: Path, sequences: list[list[int]], batch_size: int = 32) -> dict[str, tuple["np.ndarray", int]]:
    """``{module name: (sum of squared inputs per input column, tokens)}`` for every nn.Linear of
    the merged student, over ``sequences``: batches of similar lengths, right-padded (a causal
    model's real tokens never see the padding after them), and only real tokens enter the sums."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    real: list[Any] = [None]  # the current batch's real-token rows, flattened

    def add(name: str, inputs: Any) -> None:
        x = inputs.detach().reshape(-1, inputs.shape[-1])[real[0]].double()
        sums[name] = (x * x).sum(0) + sums.get(name, 0)
        counts[name] = counts.get(name, 0) + x.shape[0]

    def hook(name: str):
        return lambda _module, args: add(name, args[0])

    # The LM head's output (every position's logits: 3/4 of a 135M model's forward, 49152 x 576
    # per token) is not needed, only its input: the decoder runs alone and its last hidden state,
    # which the head would read, is added here.
    head, body = model.get_output_embeddings(), model.get_decoder()
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    skip_head = isinstance(head, torch.nn.Linear) and body is not None and head_name is not None
    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not (skip_head and m is head)]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    batches = [[sequences[i] for i in order[k:k + batch_size]] for k in range(0, len(order), batch_size)]
    try:
        with torch.inference_mode():
            for batch in tqdm(batches, desc="importance matrix", unit="batch", leave=False, disable=None):
                width = max(map(len, batch))
                mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids in batch])
                ids = torch.tensor([ids + [0] * (width - len(ids)) for ids in batch])
                real[0] = mask.reshape(-1).bool()
                if skip_head:
                    add(head_name, body(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state)
                else:
                    model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n].numpy(), counts[n]) for n in sums}


_WRITE = r"""
import json, sys
import numpy as np
import gguf

spec = json.load(open(sys.argv[1]))
data = np.load(sys.argv[2])
reader = gguf.GGUFReader(spec["model"], "r")
arch_name = bytes(reader.fields["general.architecture"].parts[-1]).decode()
n_blocks = int(reader.fields[arch_name + ".block_count"].parts[-1][0])
tensors = {t.name: [int(d) for d in t.shape] for t in reader.tensors}
arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch_name]
names = gguf.get_tensor_name_map(arch, n_blocks)
mapped, unmapped = {}, []
for hf in spec["modules"]:
    name = names.get_name(hf + ".weight", try_suffixes=(".weight",))
    if name == "output.weight" and name not in tensors:  # a tied LM head reads the embeddings
        name = "token_embd.weight"
    if name in tensors and name not in mapped.values():
        mapped[hf] = name
    else:
        unmapped.append(hf)
writer = gguf.GGUFWriter(spec["out"], arch=arch_name)
writer.add_type("imatrix")
writer.add_array(gguf.Keys.IMatrix.DATASETS, spec["datasets"])
writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, spec["chunk_count"])
writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, spec["chunk_size"])
for hf, name in sorted(mapped.items(), key=lambda kv: kv[1]):
    writer.add_tensor(name + ".in_sum2", data["sum:" + hf].astype(np.float32).reshape(1, -1))
    writer.add_tensor(name + ".counts", data["count:" + hf].astype(np.float32).reshape(1, 1))
writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
print(json.dumps({"mapped": mapped, "unmapped": unmapped, "tensors": tensors}))
"""


def write(stats: dict[str, tuple["np.ndarray", int]], model_gguf: Path, out: Path,
          dataset: str, chunk_count: int, chunk_size: int, conv: "Converter") -> dict[str, Any]:
    """Write ``stats`` (HF module names) as a GGUF imatrix for the tensors of ``model_gguf`` (the
    GGUF the quantizer reads) with the converter's gguf-py. Returns the name map, the modules
    that map to no tensor of the GGUF, and the GGUF's tensors ({name: ne})."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        arrays = {f"sum:{n}": s for n, (s, _) in stats.items()}
        arrays.update({f"count:{n}": np.array([c], dtype=np.float64) for n, (_, c) in stats.items()})
        np.savez(Path(tmp) / "stats.npz", **arrays)
        spec = {"model": str(model_gguf), "out": str(out), "modules": sorted(stats),
                "datasets": [dataset], "chunk_count": chunk_count, "chunk_size": chunk_size}
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        proc = subprocess.run([sys.executable, "-c", _WRITE, str(Path(tmp) / "spec.json"),
                               str(Path(tmp) / "stats.npz")], capture_output=True, text=True,
                              env=conv.env())
    if proc.returncode != 0 or not out.exists():
        raise ArtifactError(f"GGUF: could not write the importance matrix {out.name}: "
                            f"{proc.stderr.strip()[-600:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def coverage(written: dict[str, Any]) -> dict[str, Any]:
    """Which of the GGUF's matrix weights have an entry. Every 2-D weight a matrix multiplication
    reads should: all of them but the token embeddings, which are looked up, not multiplied
    (unless the LM head is tied to them); 1-D tensors (norms) are never quantized."""
    tensors, mapped = written["tensors"], set(written["mapped"].values())
    weights = [n for n, ne in tensors.items() if len(ne) >= 2 and n.endswith(".weight")
               and not (n == "token_embd.weight" and "output.weight" in tensors)]
    missing = sorted(n for n in weights if n not in mapped)
    return {"entries": len(mapped), "matrix_weights": len(weights), "missing": missing,
            "unmapped_modules": written["unmapped"]}


def read(path: Path) -> dict[str, "np.ndarray"]:
    """``{tensor name: per-column mean squared activation}`` from a GGUF imatrix file, as
    llama-quantize derives them (in_sum2 / counts, per expert row)."""
    import numpy as np
    from gguf import GGUFReader

    reader = GGUFReader(str(path), "r")
    kind = reader.fields.get("general.type")
    if kind is None or bytes(kind.parts[-1]).decode() != "imatrix":
        raise ArtifactError(f"{path} is not a GGUF importance matrix (general.type != imatrix).")
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    out = {}
    for name, sums in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        base = name[: -len(".in_sum2")]
        counts = tensors[base + ".counts"].reshape(-1)
        rows = sums.reshape(len(counts), -1)
        mean = np.where(counts[:, None] > 0, rows / np.maximum(counts[:, None], 1), 1.0)
        out[base] = np.ascontiguousarray(mean.reshape(-1), dtype=np.float32)
    return out

"""GGUF through llama.cpp's own converter and quantizer.

The converter (``convert_hf_to_gguf.py``, its ``conversion/`` package and the matching ``gguf-py``)
is taken from the sdist of the INSTALLED llama-cpp-python version, so the files it writes are the
files the installed llama.cpp reads; it is cached under ``cache_dir()/llama.cpp-<version>/`` and run
as a subprocess. A user's own llama.cpp checkout (``export.llama_cpp_dir``) may be given instead.
Quantization goes through ``llama_cpp.llama_model_quantize``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from edgedistill.config import cache_dir
from edgedistill.errors import ArtifactError, ConfigError, NotAvailable

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

_WANTED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


@dataclass(frozen=True)
class Converter:
    script: Path
    gguf_py: Path
    version: str  # what the manifest records as the llama.cpp version
    source: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.gguf_py), "NO_LOCAL_GGUF": ""}


def llama_cpp_python_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        raise NotAvailable("llama-cpp-python is not installed; GGUF export and quantization need it.",
                           hint="Install it with scripts/install.sh (it builds llama.cpp).") from None


def converter(llama_cpp_dir: str | None = None) -> Converter:
    """The llama.cpp converter: a given checkout, or the one matching llama-cpp-python (cached)."""
    if llama_cpp_dir:
        root = Path(llama_cpp_dir)
        script = root / "convert_hf_to_gguf.py"
        if not script.exists() or not (root / "gguf-py").is_dir():
            raise ConfigError(f"export.llama_cpp_dir {root} is not a llama.cpp checkout "
                              "(no convert_hf_to_gguf.py and gguf-py/ there).",
                              hint="Point it at a llama.cpp clone, or unset it to use the converter "
                              "matching the installed llama-cpp-python.")
        rev = subprocess.run(["git", "-C", str(root), "describe", "--tags", "--always"],
                             capture_output=True, text=True)
        version = rev.stdout.strip() if rev.returncode == 0 else "unknown (not a git checkout)"
        return Converter(script, root / "gguf-py", f"llama.cpp {version}", str(root))
    version = llama_cpp_python_version()
    root = cache_dir() / f"llama.cpp-{version}"
    if not (root / "convert_hf_to_gguf.py").exists():
        _fetch(version, root)
    return Converter(root / "convert_hf_to_gguf.py", root / "gguf-py",
                     f"llama-cpp-python {version} (vendored llama.cpp)",
                     f"sdist llama-cpp-python=={version}")


def _fetch(version: str, root: Path) -> None:
    """Take the converter out of the llama-cpp-python sdist of ``version`` (nothing is installed)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    log.info("fetching llama.cpp's converter from the llama-cpp-python %s sdist", version)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
             f"llama-cpp-python=={version}", "-d", tmp], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            raise NotAvailable(
                f"Could not download the llama-cpp-python {version} sdist for llama.cpp's converter:"
                f" {proc.stderr.strip()[-300:]}",
                hint="Give a llama.cpp checkout instead: --set export.llama_cpp_dir=/path/to/llama.cpp")
        staging = Path(tmp) / "staging"
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                _, sep, rel = member.name.partition("/vendor/llama.cpp/")
                if sep and member.isfile() and rel.startswith(_WANTED):
                    member.name = rel
                    tar.extract(member, staging, filter="data")
        if not (staging / "convert_hf_to_gguf.py").exists():
            raise NotAvailable(f"The llama-cpp-python {version} sdist carries no convert_hf_to_gguf.py.",
                               hint="Give a llama.cpp checkout: --set export.llama_cpp_dir=PATH")
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)


def supported_architectures(conv: Converter) -> tuple[str, ...]:
    """The HF architectures the converter registers (``@ModelBase.register(...)``), read from its
    source: cheap, where ``--print-supported-models`` would start the whole converter."""
    names: set[str] = set()
    root = conv.script.parent
    for src in [conv.script, *sorted((root / "conversion").glob("*.py"))]:
        for args in re.findall(r"@ModelBase\.register\(([^)]*)\)", src.read_text()):
            names.update(re.findall(r"[\"']([A-Za-z0-9_]+)[\"']", args))
    return tuple(sorted(names))


def convert(merged: Path, out: Path, outtype: str, conv: Converter, log_file: Path) -> None:
    """HF directory → GGUF (f16/bf16/f32) with llama.cpp's converter, run as a subprocess."""
    arch = (json.loads((merged / "config.json").read_text()).get("architectures") or ["?"])[0]
    supported = supported_architectures(conv)
    if supported and arch not in supported:
        raise ArtifactError(
            f"GGUF: llama.cpp's converter ({conv.version}) cannot take the {arch} architecture.",
            hint=f"Supported architectures: {', '.join(supported)}.")
    cmd = [sys.executable, str(conv.script), str(merged), "--outfile", str(out), "--outtype", outtype]
    log.info("converting %s to GGUF (%s) with %s", merged, outtype, conv.script)
    with open(log_file, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=conv.env())
    if proc.returncode != 0:
        tail = log_file.read_text()[-800:]
        raise ArtifactError(f"GGUF: llama.cpp's converter failed on {merged} (exit {proc.returncode}).",
                            hint=f"Its last output ({log_file}):\n{tail}")
    _match_tokenizer(merged, out, conv)


_REWRITE = """
import json, sys, gguf
from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata, get_field_data
src, dst, keys = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
reader = gguf.GGUFReader(src, "r")
writer = gguf.GGUFWriter(dst, arch=get_field_data(reader, gguf.Keys.General.ARCHITECTURE),
                         endianess=reader.endianess)
alignment = get_field_data(reader, gguf.Keys.General.ALIGNMENT)
if alignment is not None:
    writer.data_alignment = alignment
copy_with_new_metadata(reader, writer, {k: MetadataDetails(gguf.GGUFValueType.BOOL, v)
                                        for k, v in keys.items()}, [])
"""


def _match_tokenizer(merged: Path, out: Path, conv: Converter) -> None:
    """Tokenizer flags the converter leaves to llama.cpp's defaults, set to what the student's
    own tokenizer does, so chat prompts tokenize the same in llama.cpp:

    - a SentencePiece tokenizer whose HF pre-tokenizer never prepends '▁' after special tokens
      (Metaspace prepend_scheme "never"/"first") gets ``tokenizer.ggml.add_space_prefix = false``
      (llama.cpp's default, true, inserts a '▁' after every special token);
    - a chat template that itself opens with the bos token (Gemma's, Llama 3's) gets
      ``tokenizer.ggml.add_bos_token = false``: a runtime that renders the template and then
      tokenizes with the GGUF's add_bos would otherwise start every chat with two bos tokens."""
    keys: dict[str, bool] = {}
    tok_json = merged / "tokenizer.json"
    if tok_json.exists():
        pre = json.loads(tok_json.read_text()).get("pre_tokenizer") or {}
        pres = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
        if any(p.get("type") == "Metaspace" and p.get("prepend_scheme") in ("never", "first")
               for p in pres):
            keys["tokenizer.ggml.add_space_prefix"] = False
    if _template_opens_with_bos(merged):
        keys["tokenizer.ggml.add_bos_token"] = False
    if not keys:
        return
    fixed = out.with_name(out.name + ".prefix")
    proc = subprocess.run([sys.executable, "-c", _REWRITE, str(out), str(fixed), json.dumps(keys)],
                          capture_output=True, text=True, env=conv.env())
    if proc.returncode != 0:
        fixed.unlink(missing_ok=True)
        raise ArtifactError(f"GGUF: could not set {', '.join(keys)} on {out}: {proc.stderr[-500:]}")
    fixed.replace(out)
    log.info("set %s to match the HF tokenizer", ", ".join(f"{k}={v}" for k, v in keys.items()))


def _template_opens_with_bos(merged: Path) -> bool:
    """Whether the student's chat template renders the bos token itself."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(merged)
    if tok.chat_template is None or tok.bos_token_id is None:
        return False
    ids = tok.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                  tokenize=True)
    return bool(ids) and ids[0] == tok.bos_token_id


def quant_types() -> dict[str, int]:
    import llama_cpp

    return {n.removeprefix("LLAMA_FTYPE_MOSTLY_").lower(): getattr(llama_cpp, n)
            for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_")}


@contextlib.contextmanager
def _native_output_to(log_file: Path) -> Iterator[None]:
    """Send what native code prints on fds 1 and 2 (llama.cpp's quantizer: a line per tensor,
    through C stdio and llama-cpp-python's log callback) to ``log_file`` instead of the terminal."""
    import ctypes

    log_file.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(log_file, "a", buffering=1) as f, contextlib.redirect_stdout(f), \
                contextlib.redirect_stderr(f):  # the log callback prints to sys.stderr
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                ctypes.CDLL(None).fflush(None)  # C stdio's buffers belong in the file too
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        for fd in saved:
            os.close(fd)


# Types whose quantizer ignores an importance matrix (nothing to calibrate), and types llama.cpp
# refuses to make without one (llama-quant.cpp, tensor_requires_imatrix and the IQ2/IQ1 rules).
IGNORES_IMATRIX = frozenset({"f32", "f16", "bf16", "q8_0", "all_f32"})
NEEDS_IMATRIX = frozenset({"iq2_xxs", "iq2_xs", "iq2_s", "iq2_m", "iq1_s", "iq1_m", "q2_k_s"})


def _imatrix_params(llama_cpp, imatrix: dict[str, "np.ndarray"], dataset: str | None) -> tuple:
    """The C arrays ``llama_model_quantize_params`` points at (the caller keeps them alive): the
    importance matrix, ended by a NULL name, and the ``quantize.imatrix.*`` keys llama-quantize
    writes into the GGUF."""
    import ctypes

    entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
    keep = []
    for i, (name, values) in enumerate(sorted(imatrix.items())):
        raw = name.encode()
        keep += [raw, values]
        entries[i].name = raw
        entries[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        entries[i].size = values.size
    entries[len(imatrix)].name = None
    kv = (llama_cpp.llama_model_kv_override * 3)()
    kv[0].key, kv[0].tag = b"quantize.imatrix.entries_count", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
    kv[0].value.val_i64 = len(imatrix)
    kv[1].key, kv[1].tag = b"quantize.imatrix.dataset", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
    kv[1].value.val_str = (dataset or "unknown").encode()[:127]
    kv[2].key = b""  # the terminator
    return entries, kv, keep


# GGML types a tensor can be stored in (llama-quantize --tensor-type), where this llama.cpp has them
TENSOR_TYPES = ("f32", "f16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k",
                "q5_k", "q6_k", "iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s", "iq3_xxs", "iq3_s",
                "iq4_nl", "iq4_xs", "tq1_0", "tq2_0", "mxfp4")
TENSOR_TYPES_NEED_IMATRIX = frozenset({"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "iq2_s"})


def _tensor_type_overrides(llama_cpp, tensor_types: dict[str, str], has_imatrix: bool) -> tuple:
    """The NULL-ended ``llama_model_tensor_override`` array for ``{pattern: type}`` and the bytes it
    points at (the caller keeps both alive)."""
    known = {t: getattr(llama_cpp, f"GGML_TYPE_{t.upper()}") for t in TENSOR_TYPES
             if hasattr(llama_cpp, f"GGML_TYPE_{t.upper()}")}
    for pattern, t in tensor_types.items():
        if t not in known:
            raise ConfigError(f"Unknown GGML type {t!r} for tensors matching {pattern!r} in "
                              f"export.quantize.gguf_tensor_types.",
                              hint=f"Types this llama.cpp stores: {', '.join(known)}.")
        if t in TENSOR_TYPES_NEED_IMATRIX and not has_imatrix:
            raise ConfigError(f"GGML type {t} (tensors matching {pattern!r}) needs an importance "
                              "matrix, and this quantization has none.",
                              hint="Calibrate it: --set export.quantize.calibration=task")
    entries = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
    keep = []
    for i, (pattern, t) in enumerate(tensor_types.items()):
        raw = pattern.encode()
        keep.append(raw)
        entries[i].pattern, entries[i].type = raw, known[t]
    entries[len(tensor_types)].pattern = None
    return entries, keep


def quantize(src: Path, dst: Path, qtype: str, threads: int | None = None,
             log_file: Path | None = None, imatrix: dict[str, "np.ndarray"] | None = None,
             imatrix_dataset: str | None = None, tensor_types: dict[str, str] | None = None) -> None:
    """GGUF → quantized GGUF with llama.cpp's quantizer (``llama_model_quantize``); its per-tensor
    output goes to ``log_file`` when given. ``imatrix``: ``{tensor name: per-column mean squared
    activation}`` (:func:`edgedistill.formats.imatrix.read`), handed over as
    ``llama_model_quantize_params.imatrix``; ``tensor_types``: ``{pattern: GGML type}`` handed over
    as ``tt_overrides`` (llama-quantize's ``--tensor-type``: the first pattern a tensor's name
    matches sets its type)."""
    import ctypes

    import llama_cpp

    types = quant_types()
    if qtype.lower() not in types:
        raise ConfigError(f"Unknown GGUF quantization type {qtype!r} in export.quantize.gguf.",
                          hint=f"llama.cpp names: {', '.join(sorted(types))}.")
    if qtype.lower() in NEEDS_IMATRIX and not imatrix:
        raise ConfigError(f"GGUF {qtype} needs an importance matrix, and this quantization has none.",
                          hint="Calibrate it: --set export.quantize.calibration=task")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = types[qtype.lower()]
    params.nthread = threads or 0
    held, overrides = None, None
    if tensor_types:
        overrides = _tensor_type_overrides(llama_cpp, tensor_types, bool(imatrix))
        params.tt_overrides = ctypes.cast(overrides[0], ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    if imatrix:
        held = _imatrix_params(llama_cpp, imatrix, imatrix_dataset)
        params.imatrix = ctypes.cast(held[0], ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
        params.kv_overrides = ctypes.cast(held[1], ctypes.POINTER(llama_cpp.llama_model_kv_override))
    with _native_output_to(log_file) if log_file else contextlib.nullcontext():
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    del held, overrides
    if rc != 0 or not dst.exists():
        tail = "".join(log_file.read_text(errors="replace").splitlines(True)[-8:]) if log_file else ""
        raise ArtifactError(f"GGUF: llama.cpp's quantizer failed ({qtype}, code {rc}) on {src}.",
                            hint=f"Its last output ({log_file}):\n{tail}" if log_file else None)


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF holds: llama.cpp falls back from a k-quant when a
    row length is not a multiple of 256 (SmolLM2's 576: "q4_k_m" is then mostly Q5_0)."""
    return type_counts(tensor_type_names(path))


def type_counts(types: dict[str, str]) -> dict[str, int]:
    """``{tensor: type}`` (:func:`tensor_type_names`) → how many tensors of each type."""
    from collections import Counter

    return dict(sorted(Counter(types.values()).items()))


def tensor_type_names(path: Path) -> dict[str, str]:
    """``{tensor name: GGML type name}`` of a GGUF."""
    from gguf import GGUFReader

    return {t.name: t.tensor_type.name for t in GGUFReader(str(path), "r").tensors}


# The 32-wide block types llama.cpp falls back to from a k- or i-quant on rows that are no
# multiple of 256 and whose quantizer reads an importance matrix (Q8_0 ignores one). Their
# weighted path (make_qx_quants, a searched scale) is not their plain rounding, and can lose more
# than the weights gain: the quantize stage measures a candidate with the importance matrix on the
# k- and i-quant tensors only (scripts/bench_quant.py prints all three on a run).
FALLBACK_WEIGHTED = frozenset({"Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL"})


def kquant_tensors(types: dict[str, str]) -> set[str] | None:
    """The tensors of a quantized GGUF (``{name: GGML type}``, :func:`tensor_type_names`) that
    are not of a :data:`FALLBACK_WEIGHTED` type; None when an importance matrix limited to them
    would quantize exactly as one on every tensor, or as none (no weighted type on one side)."""
    weighted = {t for t in types.values() if t.lower() not in IGNORES_IMATRIX}
    if not weighted & FALLBACK_WEIGHTED or not weighted - FALLBACK_WEIGHTED:
        return None
    return {n for n, t in types.items() if t not in FALLBACK_WEIGHTED}

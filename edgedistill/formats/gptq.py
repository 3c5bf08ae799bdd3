"""GPTQ int4 through onnxruntime's own implementation (``MatMulNBitsQuantizer`` with
``GPTQWeightOnlyQuantConfig``), fed the calibration token sequences, with one defect corrected.

onnxruntime's GPTQ (``quantization/neural_compressor/weight_only.py``, ``gptq``; 1.32 here) takes
the upper Cholesky factor of the inverse Hessian and then propagates each quantized input row's
rounding error through that factor's column *below* the diagonal, which is all zeros: no error
is ever propagated, and the result is exactly round-to-nearest (measured: identical packed
weights to RTN on the tiny student; on a correlated synthetic layer the same output error as RTN,
where GPTQ proper cuts it 17x). Handing that function the transposed factor makes its update the
reference GPTQ update (the lower factor's column is the upper factor's row it should have read).
:func:`ort_gptq` checks this on a small synthetic layer each time: when onnxruntime's GPTQ does
not beat RTN there, the correction is applied for the duration of the call, and if GPTQ still
does not beat RTN with it, the call fails rather than ship RTN under GPTQ's name. An onnxruntime
that fixes the defect passes the check as it is and is used unchanged.

Cost: onnxruntime collects each MatMul input's Hessian by running the whole fp32 model over every
calibration sequence once per distinct MatMul input (about four per layer: q/k/v, o, gate/up, down;
~120 runs per sequence for a 30-layer model), so GPTQ's time grew with its tokens: 213 s for 1024
tokens on SmolLM2-135M on 2 cores. :func:`one_pass` answers those runs from one run per sequence
that returns every MatMul input at once: the same session over the same feeds, so the same Hessians
and the same packed weights (tested); 48 s for the same 1024 tokens (`scripts/bench_quant.py`),
peak RSS 2.7 -> 3.8 GB, since every sequence's MatMul inputs are held until each is read (once
:data:`CACHE_BYTES` are held, further sequences get the library's own runs). Calibration tokens are packed into windows
of up to :data:`WINDOW` tokens (few, long runs) and capped by ``export.quantize.gptq_max_tokens``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from edgedistill.errors import ArtifactError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

WINDOW = 512  # tokens per calibration sequence fed to GPTQ (at most the model's context)
CACHE_BYTES = 2 << 30  # held activations past which one_pass runs once per input again


class TokenReader:
    """onnxruntime's CalibrationDataReader over token sequences: every input of the graph for a
    prefill of each sequence (input_ids, attention_mask, position_ids when the graph has them, and
    an empty past for every KV-cache input), names and KV shapes read from the graph itself, so
    optimum's and ORT GenAI's layouts both work."""

    def __init__(self, model: "onnx.ModelProto", sequences: list[list[int]], cfg: dict):
        """``cfg``: the model's config.json (KV heads and head size, where the graph leaves them
        symbolic)."""
        import numpy as np
        from onnx import TensorProto

        heads = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        init = {i.name for i in model.graph.initializer}
        self.feeds = []
        for ids in sequences:
            n, feed = len(ids), {}
            for i in (i for i in model.graph.input if i.name not in init):
                t = i.type.tensor_type
                if i.name == "input_ids":
                    feed[i.name] = np.array([ids], dtype=np.int64)
                elif i.name == "attention_mask":
                    feed[i.name] = np.ones((1, n), dtype=np.int64)
                elif i.name == "position_ids":
                    feed[i.name] = np.arange(n, dtype=np.int64)[None]
                elif i.name.startswith("past_key_values"):
                    dims = [d.dim_value for d in t.shape.dim]
                    dtype = np.float16 if t.elem_type == TensorProto.FLOAT16 else np.float32
                    feed[i.name] = np.zeros((1, dims[1] or heads, 0, dims[3] or head_dim), dtype=dtype)
                else:
                    raise ArtifactError(f"ONNX: GPTQ calibration cannot feed the graph input {i.name!r}.",
                                        hint="Use --set export.quantize.algo=k_quant for this model.")
            self.feeds.append(feed)
        self._next = 0

    def get_next(self) -> dict | None:
        if self._next >= len(self.feeds):
            return None
        self._next += 1
        return self.feeds[self._next - 1]

    def __iter__(self):
        return iter(self.get_next, None)


def pack(sequences: list[list[int]], window: int) -> list[list[int]]:
    """The sequences end to end, cut into windows of ``window`` tokens (as GPTQ and llama.cpp's
    imatrix tool read calibration text: few long runs instead of many short ones)."""
    stream = [t for s in sequences for t in s]
    return [stream[i:i + window] for i in range(0, len(stream), window)]


def _layer_error_ratio(wo: Any) -> float:
    """GPTQ's output error over RTN's on a small synthetic layer whose inputs are correlated (as a
    transformer's are): well below 1 when GPTQ propagates rounding error, 1 when it does not."""
    import numpy as np

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.02, (128, 64)).astype(np.float32)
    x = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 128)) + 0.3 * rng.normal(size=(400, 128))
    h = 2 * x.T @ x / len(x)
    gptq = wo.gptq(w.copy(), h.copy(), num_bits=4, group_size=32, scheme="asym", blocksize=128)
    rtn = wo.qdq_tensor(w.T, 4, 32, "asym").T
    return float(((x @ (w - gptq)) ** 2).mean() / ((x @ (w - rtn)) ** 2).mean())


class _NumpyTransposedCholesky:
    """numpy, but ``linalg.cholesky`` returns the factor transposed (see the module docstring)."""

    def __init__(self, np: Any):
        self._np = np
        self.linalg = self._Linalg(np)

    class _Linalg:
        def __init__(self, np: Any):
            self._np = np

        def cholesky(self, a: Any) -> Any:
            return self._np.linalg.cholesky(a).T

        def __getattr__(self, name: str) -> Any:
            return getattr(self._np.linalg, name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._np, name)


class _OnePassSession:
    """An onnxruntime InferenceSession whose ``run([name], feed)`` is answered from one run of
    every graph output on that feed, each output handed out once (then dropped) -- GPTQ asks each
    MatMul input of each calibration sequence exactly once. Anything else goes to the session."""

    def __init__(self, session: Any):
        self._session = session
        self._names = [o.name for o in session.get_outputs()]
        # id(feed) -> (feed, outputs left); holding the feed keeps its id from being reused
        self._held: dict[int, tuple[Any, dict[str, Any]]] = {}
        self._bytes = 0
        self.runs = 0

    def run(self, names: Any, feed: Any, *args: Any, **kwargs: Any) -> list:
        if args or kwargs or not isinstance(names, list) or len(names) != 1 \
                or names[0] not in self._names:
            return self._run(names, feed, *args, **kwargs)
        entry = self._held.get(id(feed))
        if entry is None:
            if self._bytes >= CACHE_BYTES:
                return self._run(names, feed)
            entry = (feed, dict(zip(self._names, self._run(self._names, feed))))
            self._held[id(feed)] = entry
            self._bytes += sum(a.nbytes for a in entry[1].values())
        out = entry[1].pop(names[0], None)
        if out is None:  # asked twice: run it again rather than guess
            return self._run(names, feed)
        self._bytes -= out.nbytes
        return [out]

    def _run(self, *args: Any, **kwargs: Any) -> list:
        self.runs += 1
        return self._session.run(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class _OrtOnePass:
    """The onnxruntime module, but an InferenceSession is a :class:`_OnePassSession`."""

    def __init__(self, ort: Any):
        self._ort = ort
        self.sessions: list[_OnePassSession] = []

    def InferenceSession(self, *args: Any, **kwargs: Any) -> _OnePassSession:  # noqa: N802
        session = _OnePassSession(self._ort.InferenceSession(*args, **kwargs))
        self.sessions.append(session)
        return session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ort, name)


@contextlib.contextmanager
def one_pass() -> Iterator[_OrtOnePass]:
    """onnxruntime's GPTQ with its Hessians collected in one model run per calibration sequence
    (see the module docstring), for the duration."""
    from onnxruntime.quantization.neural_compressor import weight_only as wo

    real = wo.ort
    wo.ort = proxy = _OrtOnePass(real)
    try:
        yield proxy
    finally:
        wo.ort = real


@contextlib.contextmanager
def ort_gptq() -> Iterator[None]:
    """onnxruntime's GPTQ, corrected for the duration when it does not propagate rounding error."""
    from onnxruntime.quantization.neural_compressor import weight_only as wo

    if _layer_error_ratio(wo) < 0.9:
        yield
        return
    real = wo.np
    wo.np = _NumpyTransposedCholesky(real)
    try:
        ratio = _layer_error_ratio(wo)
        if ratio >= 0.9:
            raise ArtifactError(f"onnxruntime's GPTQ does not reduce a layer's output error below "
                                f"round-to-nearest's (ratio {ratio:.2f}), even corrected.",
                                hint="Quantize without it: --set export.quantize.algo=k_quant")
        log.info("onnxruntime's GPTQ propagates no rounding error (it equals RTN); using it with "
                 "the inverse-Hessian factor transposed (synthetic layer error %.2f x RTN's)", ratio)
        yield
    finally:
        wo.np = real


LARGE = 2**31  # protobuf's limit: onnxruntime's GPTQ takes a larger model only from a file


def _as_file_if_large(model: "onnx.ModelProto", folder: Path) -> "onnx.ModelProto | str":
    """The model itself, or, past 2 GB of weights (a 0.5B student in fp32), its path saved in
    ``folder`` with external data: onnxruntime's GPTQ writes its augmented copy beside the model's
    file and has none for a model given in memory ("NoneType + str")."""
    import onnx

    if sum(t.ByteSize() for t in model.graph.initializer) <= LARGE:
        return model
    path = folder / "model-q8.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model-q8.onnx.data")
    return str(path)


def gptq_int4(model: "onnx.ModelProto", block_size: int, sensitive: list[str],
              calibration: list[list[int]], cfg: dict) -> Any:
    """The sensitive MatMuls at 8 bits (round-to-nearest, symmetric, as the RTN mix), then GPTQ at
    4 bits over every MatMul left (onnxruntime's GPTQ ignores nodes_to_exclude; once the
    sensitive ones are MatMulNBits it no longer sees them). Returns the quantizer's model."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (GPTQWeightOnlyQuantConfig,
                                                                 MatMulNBitsQuantizer)

    window = min(WINDOW, int(cfg.get("max_position_embeddings") or WINDOW))
    sequences = pack(calibration, window)
    keep = set(sensitive)
    rest = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in keep]
    q8 = MatMulNBitsQuantizer(model, bits=8, block_size=block_size, is_symmetric=True,
                              accuracy_level=4, nodes_to_exclude=rest)
    q8.process()
    reader = TokenReader(q8.model.model, sequences, cfg)
    log.info("GPTQ over %d calibration tokens in %d sequences", sum(map(len, sequences)), len(sequences))
    with tempfile.TemporaryDirectory(prefix="edgedistill-gptq-") as tmp, ort_gptq(), one_pass() as ort:
        q4 = MatMulNBitsQuantizer(_as_file_if_large(q8.model.model, Path(tmp)), bits=4, block_size=block_size,
                                  is_symmetric=False, accuracy_level=4,
                                  algo_config=GPTQWeightOnlyQuantConfig(calibration_data_reader=reader,
                                                                        percdamp=0.01, block_size=128))
        q4.process()  # a model read from a file comes back with its weights loaded: tmp may go
    log.info("GPTQ: %d model runs for the Hessians of %d sequences",
             sum(s.runs for s in ort.sessions), len(sequences))
    return q4.model

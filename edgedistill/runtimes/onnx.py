"""Plain onnxruntime over optimum's text-generation-with-past layout (a KV-cache loop), with the
transformers tokenizer saved beside the model; no optimum, no torch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from edgedistill.errors import ArtifactError
from edgedistill.runtimes import Runtime, eos_ids, hf_chat_ids

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class OnnxRuntime(Runtime):
    kind = "onnx"

    def __init__(self, path: Path, threads: int | None = None,
                 providers: list[str] | None = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        if path.is_dir():
            path = path / "model.onnx"
        self.path = path
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ArtifactError(f"onnxruntime cannot load {path}: {e}",
                                hint="The file is corrupt or truncated; re-export it.") from None
        self.tokenizer = AutoTokenizer.from_pretrained(path.parent)
        self.eos = eos_ids(path.parent, self.tokenizer)
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.past_names = [n for n in self.inputs if n.startswith("past_key_values.")]
        self.present_names = [n.replace("past_key_values.", "present.") for n in self.past_names]
        first = self.inputs[self.past_names[0]] if self.past_names else None
        self.kv_shape = (first.shape[1], first.shape[3]) if first else None  # heads, head_dim
        self.kv_dtype = "float16" if first is not None and "float16" in first.type else "float32"

    def _run(self, ids: list[int], past: dict | None, n_past: int) -> tuple["np.ndarray", dict]:
        import numpy as np

        n = len(ids)
        feed: dict[str, Any] = {"input_ids": np.array([ids], dtype=np.int64)}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = np.ones((1, n_past + n), dtype=np.int64)
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(n_past, n_past + n, dtype=np.int64)[None]
        for name in self.past_names:
            feed[name] = past[name] if past else np.zeros(
                (1, self.kv_shape[0], 0, self.kv_shape[1]), dtype=self.kv_dtype)
        outs = self.session.run(["logits", *self.present_names], feed)
        return outs[0][0], dict(zip(self.past_names, outs[1:]))

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        return hf_chat_ids(self.tokenizer, messages)

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int, *,
                   ignore_eos: bool = False) -> Iterator[int]:
        import numpy as np

        logits, past = self._run(prompt_ids, None, 0)
        n_past = len(prompt_ids)
        for i in range(max_new_tokens):
            last = logits[-1].astype(np.float32)
            if ignore_eos:
                last[list(self.eos)] = -np.inf
            tok = int(np.argmax(last))
            yield tok
            if (tok in self.eos and not ignore_eos) or i == max_new_tokens - 1:
                return
            logits, past = self._run([tok], past, n_past)
            n_past += 1

    def is_stop(self, token_id: int) -> bool:
        return token_id in self.eos

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def logits(self, ids: list[int]) -> "np.ndarray":
        import numpy as np

        return self._run(ids, None, 0)[0].astype(np.float32)

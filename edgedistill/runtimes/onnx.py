"""Plain onnxruntime over optimum's text-generation-with-past layout (a KV-cache loop), with the
transformers tokenizer saved beside the model; no optimum, no torch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from edgedistill.errors import ArtifactError
from edgedistill.runtimes import Runtime, eos_ids, hf_chat_ids, left_padded

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

# generate_ids_batch: at most this much of prompt-pass logits at once (16 prompts of 64 tokens with
# a 49k vocabulary are 200 MB; with Qwen's 152k vocabulary and 200-token prompts, 1.9 GB)
PREFILL_LOGITS_BYTES = 256 << 20


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
        vocab = next(o.shape[-1] for o in self.session.get_outputs() if o.name == "logits")
        self.vocab = vocab if isinstance(vocab, int) else len(self.tokenizer)

    def _session(self, ids: "np.ndarray", mask: "np.ndarray", positions: "np.ndarray",
                 past: dict | None) -> tuple["np.ndarray", dict]:
        """One decoder call on a [batch, new tokens] block: (logits [batch, new, vocab], present)."""
        import numpy as np

        feed: dict[str, Any] = {"input_ids": ids}
        if "attention_mask" in self.inputs:
            feed["attention_mask"] = mask
        if "position_ids" in self.inputs:
            feed["position_ids"] = positions
        for name in self.past_names:
            feed[name] = past[name] if past else np.zeros(
                (len(ids), self.kv_shape[0], 0, self.kv_shape[1]), dtype=self.kv_dtype)
        outs = self.session.run(["logits", *self.present_names], feed)
        return outs[0], dict(zip(self.past_names, outs[1:]))

    def _run(self, ids: list[int], past: dict | None, n_past: int) -> tuple["np.ndarray", dict]:
        import numpy as np

        n = len(ids)
        logits, present = self._session(np.array([ids], dtype=np.int64),
                                         np.ones((1, n_past + n), dtype=np.int64),
                                         np.arange(n_past, n_past + n, dtype=np.int64)[None], past)
        return logits[0], present

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

    def _prefill(self, ids: "np.ndarray", mask: "np.ndarray", positions: "np.ndarray"
                 ) -> tuple["np.ndarray", dict]:
        """The prompts' pass: (last position's logits [batch, vocab], past). The export returns
        logits for EVERY position, so rows go in groups whose logits fit PREFILL_LOGITS_BYTES."""
        import numpy as np

        rows = max(1, PREFILL_LOGITS_BYTES // (ids.shape[1] * self.vocab * 4))
        lasts, pasts = [], []
        for i in range(0, len(ids), rows):
            logits, past = self._session(ids[i:i + rows], mask[i:i + rows], positions[i:i + rows], None)
            lasts.append(logits[:, -1].astype(np.float32))
            pasts.append(past)
        if len(pasts) == 1:
            return lasts[0], pasts[0]
        return np.concatenate(lasts), {k: np.concatenate([p[k] for p in pasts]) for k in pasts[0]}

    def generate_ids_batch(self, prompts: list[list[int]], max_new_tokens: int
                           ) -> list[tuple[list[int], str]]:
        """The batch through the decoder together: prompts left-padded, the attention mask 0 on
        the padding and positions counted from each row's first real token (as transformers does),
        the past grown by one column a step. A row leaves the batch when it stops (its past rows
        are dropped), and padding columns no remaining row needs are cut from mask and past.
        A graph without attention_mask or position_ids inputs cannot tell padding from text: it
        goes one prompt at a time."""
        import numpy as np

        if not {"attention_mask", "position_ids"} <= set(self.inputs) or len(prompts) == 1:
            return super().generate_ids_batch(prompts, max_new_tokens)
        pad = self.tokenizer.pad_token_id
        pad = min(self.eos) if pad is None else pad
        ids, mask = left_padded(prompts, pad)
        positions = np.maximum(mask.cumsum(axis=1) - 1, 0)
        live = np.arange(len(prompts))  # the prompt each batch row answers
        out: list[list[int]] = [[] for _ in prompts]
        finish = ["length"] * len(prompts)
        logits, past = self._prefill(ids, mask, positions)
        last = positions[:, -1]
        for _ in range(max_new_tokens):
            tokens = logits.argmax(axis=-1)
            keep = []
            for j, row in enumerate(live):
                tok = int(tokens[j])
                if tok in self.eos:
                    finish[row] = "stop"
                    continue
                out[row].append(tok)
                if len(out[row]) < max_new_tokens:
                    keep.append(j)
            if not keep:
                break
            if len(keep) < len(live):
                live, tokens, mask, last = live[keep], tokens[keep], mask[keep], last[keep]
                past = {k: v[keep] for k, v in past.items()}
                cut = int(mask.argmax(axis=1).min())  # leading columns padding in every row
                if cut:
                    mask = mask[:, cut:]
                    past = {k: np.ascontiguousarray(v[:, :, cut:]) for k, v in past.items()}
            mask = np.concatenate([mask, np.ones((len(live), 1), dtype=np.int64)], axis=1)
            last = last + 1
            step, past = self._session(tokens[:, None].astype(np.int64), mask, last[:, None], past)
            logits = step[:, -1].astype(np.float32)
        return list(zip(out, finish))

    def is_stop(self, token_id: int) -> bool:
        return token_id in self.eos

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def logits(self, ids: list[int]) -> "np.ndarray":
        import numpy as np

        return self._run(ids, None, 0)[0].astype(np.float32)

"""ONNX Runtime GenAI packages (genai_config.json, model.onnx, tokenizer)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from edgedistill.errors import ArtifactError, NotAvailable
from edgedistill.runtimes import Runtime

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


class OrtGenAIRuntime(Runtime):
    kind = "ortgenai"

    def __init__(self, path: Path, threads: int | None = None,
                 providers: list[str] | None = None):
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise NotAvailable("onnxruntime-genai is not installed; ortgenai artifacts need it.",
                               hint="Install it with `pip install onnxruntime-genai`.") from None
        self._og = og
        self.path = path if path.is_dir() else path.parent
        if not (self.path / "genai_config.json").exists():
            raise ArtifactError(f"{self.path} has no genai_config.json; it is not an "
                                "ONNX Runtime GenAI package.")
        try:
            config = og.Config(str(self.path))
            if providers:
                config.clear_providers()
                for p in providers:
                    name = p.removesuffix("ExecutionProvider").lower()
                    if name != "cpu":
                        config.append_provider(name)
            # every core unless told: ORT GenAI's own default is one intra-op thread (measured
            # on 2 cores: a 35-token prefill of the demo's int4 student 78 ms on 1, 47 ms on 2)
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": threads or os.cpu_count() or 1,
                "inter_op_num_threads": 1}}}}))
            self.model = og.Model(config)
        except RuntimeError as e:
            raise ArtifactError(f"ONNX Runtime GenAI cannot load {self.path}: {e}",
                                hint="The package is corrupt or truncated; re-export it.") from None
        self.tokenizer = og.Tokenizer(self.model)
        cfg = json.loads((self.path / "genai_config.json").read_text())
        eos = cfg["model"].get("eos_token_id")
        self.eos = set(eos if isinstance(eos, list) else [eos])
        self.pad: int | None = cfg["model"].get("pad_token_id")

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        text = self.tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        return [int(i) for i in self.tokenizer.encode(text)]

    def _generator(self, prompt_len: int, max_new_tokens: int, ignore_eos: bool) -> Any:
        params = self._og.GeneratorParams(self.model)
        total = prompt_len + max_new_tokens
        opts: dict[str, Any] = {"max_length": total, "do_sample": False}
        if ignore_eos:
            opts["min_length"] = total
        params.set_search_options(**opts)
        return self._og.Generator(self.model, params)

    def stream_ids(self, prompt_ids: list[int], max_new_tokens: int, *,
                   ignore_eos: bool = False) -> Iterator[int]:
        gen = self._generator(len(prompt_ids), max_new_tokens, ignore_eos)
        gen.append_tokens(prompt_ids)
        produced = 0
        while not gen.is_done() and produced < max_new_tokens:
            gen.generate_next_token()
            tok = int(gen.get_next_tokens()[0])
            produced += 1
            yield tok
            if tok in self.eos and not ignore_eos:
                return

    def generate_ids_batch(self, prompts: list[list[int]], max_new_tokens: int
                           ) -> list[tuple[list[int], str]]:
        """The batch as one ORT GenAI generator (search option ``batch_size``), fed the prompts
        RIGHT-padded with the package's pad token: ORT GenAI masks the trailing run of pad tokens
        of each row and continues the row from its last real token (pad tokens inside a prompt,
        such as SmolLM2's <|im_end|> that is also its pad, stay real). A row's tokens after its
        end-of-turn are pad tokens and are dropped. A prompt that itself ends in the pad token
        would be cut short, so such a batch (or a package without a pad token) goes one prompt
        at a time."""
        import numpy as np

        if self.pad is None or any(p[-1] == self.pad for p in prompts):
            return super().generate_ids_batch(prompts, max_new_tokens)
        width = max(len(p) for p in prompts)
        ids = np.full((len(prompts), width), self.pad, dtype=np.int32)
        for row, prompt in enumerate(prompts):
            ids[row, :len(prompt)] = prompt
        params = self._og.GeneratorParams(self.model)
        params.set_search_options(batch_size=len(prompts), max_length=width + max_new_tokens,
                                  do_sample=False)
        gen = self._og.Generator(self.model, params)
        gen.append_tokens(ids)
        out: list[list[int]] = [[] for _ in prompts]
        finish: list[str | None] = [None] * len(prompts)
        for _ in range(max_new_tokens):
            if gen.is_done():
                break
            gen.generate_next_token()
            for row, tok in enumerate(gen.get_next_tokens().tolist()):
                if finish[row] is None:
                    if tok in self.eos:
                        finish[row] = "stop"
                    else:
                        out[row].append(int(tok))
        return [(toks, f or "length") for toks, f in zip(out, finish)]

    def is_stop(self, token_id: int) -> bool:
        return token_id in self.eos

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if ids else ""

    def logits(self, ids: list[int]) -> "np.ndarray":
        """Every position's logits: after one append of all ids, the decoder's ``logits`` output
        holds a row per position (``get_logits`` would give the last one only)."""
        import numpy as np

        gen = self._generator(len(ids), 1, ignore_eos=True)
        gen.append_tokens(ids)
        out = np.asarray(gen.get_output("logits"), dtype=np.float32)
        return out.reshape(len(ids), -1)

    def close(self) -> None:
        del self.tokenizer, self.model

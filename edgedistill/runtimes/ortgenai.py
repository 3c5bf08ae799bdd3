"""ONNX Runtime GenAI packages (genai_config.json, model.onnx, tokenizer)."""

from __future__ import annotations

import json
import logging
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
            if threads:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                    "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
            self.model = og.Model(config)
        except RuntimeError as e:
            raise ArtifactError(f"ONNX Runtime GenAI cannot load {self.path}: {e}",
                                hint="The package is corrupt or truncated; re-export it.") from None
        self.tokenizer = og.Tokenizer(self.model)
        cfg = json.loads((self.path / "genai_config.json").read_text())
        eos = cfg["model"].get("eos_token_id")
        self.eos = set(eos if isinstance(eos, list) else [eos])

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

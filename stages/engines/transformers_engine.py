"""Plain Hugging Face `generate`: the fallback that needs nothing but transformers + torch.

Requests are grouped by sampling parameters and run in left-padded batches of up to max_num_seqs prompts, n samples
each via num_return_sequences, in a worker thread (asyncio.to_thread) so the event loop stays free. Chat messages go
through the tokenizer's chat template. Slow on CPU; meant for correctness, not throughput.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Optional

from stages.engines.base import (Completion, Engine, GenerationRequest, GenerationResult, OnResult,
                                 SamplingParams)
from stages.engines.hardware import choose_dtype, detect_device
from stages.engines.model_prep import model_label, resolve_model
from schemas.errors import EngineError

log = logging.getLogger(__name__)


class TransformersEngine(Engine):
    kind = "transformers"

    def __init__(self, config: Any, models_dir: str = "data/models"):
        super().__init__(config)
        self.models_dir = models_dir
        self.model_path: Optional[str] = None
        self._model = None
        self._tok = None
        self._lock = threading.Lock()
        self.device = None
        self.dtype_choice = None

    @property
    def model_name(self) -> str:
        return model_label(self.config.model)

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_model"], d["_tok"], d["_lock"] = None, None, None
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)
        self._lock = threading.Lock()

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = resolve_model(self.config.model, self.models_dir)
        self.device = detect_device(allow_gpu=False)   # this engine runs on the CPU
        self.dtype_choice = choose_dtype(self.config.dtype, self.device)
        if self.dtype_choice.warning:
            log.warning(self.dtype_choice.warning)
        try:
            tok = AutoTokenizer.from_pretrained(self.model_path)
            model = AutoModelForCausalLM.from_pretrained(self.model_path,
                                                         dtype=getattr(torch, self.dtype_choice.dtype))
        except OSError as e:
            raise EngineError(f"transformers engine cannot load '{self.model_path}': {e}") from e
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        model.eval()
        torch.manual_seed(self.config.seed)
        self._tok, self._model = tok, model

    async def start(self) -> None:
        if self._model is None:
            await asyncio.to_thread(self._load)

    async def close(self) -> None:
        self._model = None
        self._tok = None

    def describe(self) -> dict[str, Any]:
        d = {"engine": self.kind, "model": self.model_name, "dtype": self.config.dtype,
             "max_model_len": self.config.max_model_len, "batch_size": self.config.max_num_seqs}
        if self.dtype_choice is not None:
            d.update(dtype=self.dtype_choice.dtype, dtype_requested=self.dtype_choice.requested,
                     dtype_reason=self.dtype_choice.reason, device=self.device.as_dict())
        return d

    def _text(self, req: GenerationRequest) -> str:
        if req.messages is not None:
            return self._tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        return req.prompt or ""

    def _eos_ids(self) -> set[int]:
        eos = self._model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self._tok.eos_token_id is not None:
            ids.add(self._tok.eos_token_id)
        return ids

    def _run_batch(self, reqs: list[GenerationRequest], texts: list[str], s: SamplingParams,
                   results: list[GenerationResult]) -> None:
        import torch

        special = reqs[0].messages is None
        enc = self._tok(texts, return_tensors="pt", padding=True, add_special_tokens=special)
        kwargs: dict[str, Any] = dict(max_new_tokens=s.max_tokens, num_return_sequences=s.n,
                                      pad_token_id=self._tok.pad_token_id)
        if s.min_tokens:
            kwargs.update(min_new_tokens=s.min_tokens)
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(do_sample=False)
        if s.stop:
            kwargs.update(stop_strings=list(s.stop), tokenizer=self._tok)
        with torch.no_grad():
            out = self._model.generate(**enc, **kwargs)
        gen = out[:, enc["input_ids"].shape[1]:]
        eos = self._eos_ids()
        for b, res in enumerate(results):
            for j in range(s.n):
                row = gen[b * s.n + j].tolist()
                cut = next((k for k, t in enumerate(row) if t in eos), None)
                toks = row if cut is None else row[:cut]
                text = self._tok.decode(toks, skip_special_tokens=True)
                finish = "stop" if cut is not None else ("length" if len(row) >= s.max_tokens else "stop")
                for st in s.stop:
                    if st in text:
                        text, finish = text[:text.index(st)], "stop"
                res.completions.append(Completion(text=text, finish_reason=finish, completion_tokens=len(toks),
                                                  token_ids=toks if reqs[b].return_token_ids else None))

    def _generate_sync(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        results = [GenerationResult(request_id=r.request_id) for r in requests]
        groups: dict[tuple, list[int]] = {}
        texts = []
        for k, r in enumerate(requests):
            t = self._text(r)
            texts.append(t)
            n_tok = len(self._tok(t, add_special_tokens=r.messages is None)["input_ids"])
            results[k].prompt_tokens = n_tok
            if n_tok >= self.config.max_model_len:
                results[k].error_reason = "prompt_too_long"
                results[k].error_message = f"prompt has {n_tok} tokens; max_model_len is {self.config.max_model_len}"
                continue
            s = r.sampling
            key = (s.temperature, s.top_p, s.max_tokens, s.min_tokens, s.n, tuple(s.stop), r.messages is None)
            groups.setdefault(key, []).append(k)
        bs = max(1, self.config.max_num_seqs)
        with self._lock:
            for idx in groups.values():
                for i in range(0, len(idx), bs):
                    chunk = idx[i:i + bs]
                    self._run_batch([requests[k] for k in chunk], [texts[k] for k in chunk],
                                    requests[chunk[0]].sampling, [results[k] for k in chunk])
        return results

    async def generate(self, requests: list[GenerationRequest],
                       on_result: Optional[OnResult] = None) -> list[GenerationResult]:
        if self._model is None:
            await self.start()
        out = await asyncio.to_thread(self._generate_sync, requests)
        for i, r in enumerate(out):
            if on_result is not None:
                on_result(i, r)
        return out

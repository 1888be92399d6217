"""Counting a conversation's prompt tokens the way the policy's engine will, for context trimming.

    count, how = token_counter(engine_config, models_dir)      # how: "words", "tokenizer:<path>" or "estimate"
    count([{"role": "user", "content": "..."}])                 # tokens of the chat prompt, generation prompt included

- fake engine: whitespace words of the messages' text (what the fake engine counts and limits);
- vllm / transformers: the model's own tokenizer and chat template (as the vLLM engine renders requests);
- openai: the `tokenizer` named in the stage's options, else the served model's name if it loads as a
  tokenizer (local path or Hugging Face cache), else an estimate (characters / 3 plus 4 per message), which
  errs on the long side so a trimmed prompt still fits.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional

Counter = Callable[[list[dict]], int]


def plain_messages(messages: list[dict]) -> list[dict]:
    """Messages as a chat template takes them: role and content only (per-message loss flags dropped)."""
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def words(messages: list[dict]) -> int:
    return len("\n".join(m.get("content", "") for m in messages).split())


def estimate(messages: list[dict]) -> int:
    return sum(len(m.get("content", "")) // 3 + 4 for m in messages) + 4


def load_tokenizer(name: str) -> Any:
    """A Hugging Face tokenizer from a directory or a cached hub id (nothing is downloaded offline)."""
    from transformers import AutoTokenizer
    if os.path.isdir(name):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return AutoTokenizer.from_pretrained(name)


def tokenizer_counter(tok: Any) -> Counter:
    def count(messages: list[dict]) -> int:
        text = tok.apply_chat_template(plain_messages(messages), tokenize=False, add_generation_prompt=True)
        return len(tok(text, add_special_tokens=False)["input_ids"])
    return count


def counter_name(engine: Any, tokenizer: Optional[str] = None) -> str:
    """What `token_counter` will count with, known without loading anything (for the manifest)."""
    if tokenizer:
        return f"tokenizer:{tokenizer}"
    if engine.kind == "fake":
        return "words"
    if engine.kind in ("vllm", "transformers"):
        return f"tokenizer:{engine.label()}"
    return f"tokenizer:{engine.model} if it loads, else estimate"


def token_counter(engine: Any, models_dir: str, tokenizer: Optional[str] = None) -> tuple[Counter, str]:
    """(count, how) for an EngineConfig. Raises only for a named `tokenizer` that cannot load."""
    if tokenizer:
        from stages.engines.model_prep import resolve_model
        path = resolve_model(tokenizer, models_dir)
        return tokenizer_counter(load_tokenizer(path)), f"tokenizer:{tokenizer}"
    if engine.kind == "fake":
        return words, "words"
    if engine.kind in ("vllm", "transformers"):
        from stages.engines.model_prep import resolve_model
        path = resolve_model(engine.model, models_dir)
        return tokenizer_counter(load_tokenizer(path)), f"tokenizer:{engine.label()}"
    try:
        return tokenizer_counter(load_tokenizer(engine.model)), f"tokenizer:{engine.model}"
    except Exception:
        return estimate, "estimate"

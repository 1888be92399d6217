"""Pre-tokenizing a conversation with per-message loss: input_ids, labels (-100 where no loss), completion_mask.

Chat templates rarely mark where a message's tokens are (SmolLM2's has no `{% generation %}` markers), so spans
are found by rendering prefixes: the conversation's text is rendered once; message k ends where the rendering of
messages[:k+1] ends (which must be a prefix of the whole: a template that rewrites earlier turns is refused), and
starts where its content starts: messages[:k] plus message k with a sentinel content is rendered, and the text
before the sentinel must again be a prefix of the whole. So the role header ("<|im_start|>assistant\\n") belongs
to no message (for an assistant turn it is the generation prompt, given at inference). A message's span ends at
its last non-whitespace character (the end-of-turn token is in, the newline after it is not). The whole text is
tokenized once (offsets from a fast tokenizer) and each token takes the loss of the message its first character
lies in; tokens in no message (the template's default system prompt, role headers) have no loss.
Also what the sft-tokenized exports share: their ExportSpec (sft_tokenized_export), `tokenizer` option and metadata.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Any, Callable

from schemas.registry import ExportSpec
from schemas.errors import ConfigError
from stages.agents.tokens import load_tokenizer, plain_messages
from stages.engines.model_prep import resolve_model

IGNORE = -100


SENTINEL = "\uE000errata-content\uE001"     # private-use characters: never in real text


def message_spans(messages: list[dict], render: Callable[[list[dict]], str]) -> tuple[str, list[tuple[int, int]]]:
    """(full text, [(start, end)] character span of each message in it); `render(messages)` is the chat template
    (no generation prompt). ConfigError if the template is not prefix-preserving."""
    full = render(messages)
    spans = []
    for k, m in enumerate(messages):
        upto = render(messages[:k + 1])
        probe = render(messages[:k] + [{"role": m["role"], "content": SENTINEL}])
        at = probe.find(SENTINEL)
        if not full.startswith(upto) or at < 0 or not full.startswith(probe[:at]):
            raise ConfigError("the tokenizer's chat template renders a conversation's earlier messages differently "
                              "once later ones follow (not prefix-preserving), so message spans cannot be found")
        spans.append((at, at + len(full[at:len(upto)].rstrip())))
    return full, spans


def segment_loss(content: str, segments: list[dict]) -> Callable[[int], bool]:
    """loss(offset in the message) from the message's segments [{text, loss}], whose texts joined must be its
    content; an offset past the content (the end-of-turn token) takes the last segment's loss."""
    if "".join(sg["text"] for sg in segments) != content or not segments:
        raise ConfigError("a message's segments, joined, are not its content: cannot place their loss flags")
    ends, at = [], 0
    for sg in segments:
        at += len(sg["text"])
        ends.append(at)

    def loss(offset: int) -> bool:
        for end, sg in zip(ends, segments):
            if offset < end:
                return bool(sg["loss"])
        return bool(segments[-1]["loss"])
    return loss


def tokenize_conversation(messages: list[dict], tokenizer: Any) -> dict[str, list[int]]:
    """input_ids, labels (the token id where its message has loss, else -100) and completion_mask (1 where a
    label is set) of a conversation of {role, content, loss} messages, rendered with the tokenizer's chat
    template. A message may instead carry `segments` [{text, loss}] (joined: its content): then each of its
    tokens takes the loss of the segment its first character lies in (part of one turn masked, e.g. LEMMA's
    erroneous prefix)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("pre-tokenized exports need a fast tokenizer (character offsets per token)")

    def render(msgs: list[dict]) -> str:
        return tokenizer.apply_chat_template(plain_messages(msgs), tokenize=False)

    full, spans = message_spans(messages, render)
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    by_segment = {k: segment_loss(m["content"], m["segments"]) for k, m in enumerate(messages)
                  if m.get("segments")}
    k = 0
    for i, (s, e) in enumerate(offsets):
        while k < len(spans) and s >= spans[k][1]:
            k += 1
        if k < len(spans) and spans[k][0] <= s < spans[k][1]:
            if by_segment[k](s - spans[k][0]) if k in by_segment else messages[k].get("loss"):
                labels[i] = ids[i]
    return {"input_ids": ids, "labels": labels, "completion_mask": [int(x != IGNORE) for x in labels]}


def tokenizer_facts(name: str, tokenizer: Any) -> dict[str, Any]:
    """What an export records about the tokenizer: name, class, vocabulary size, and the chat template's sha256."""
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise ConfigError(f"tokenizer {name} has no chat template")
    return {"tokenizer": name, "tokenizer_class": type(tokenizer).__name__, "vocab_size": len(tokenizer),
            "chat_template_sha256": hashlib.sha256(template.encode()).hexdigest(),
            "eos_token": tokenizer.eos_token, "label_ignore_index": IGNORE}


TOKENIZER_OPTION = "model directory, hub id or 'embedded' whose tokenizer and chat template are used"


@lru_cache(maxsize=4)
def _tokenizer(name: str, models_dir: str) -> Any:
    try:
        return load_tokenizer(resolve_model(name, models_dir))
    except Exception as e:
        raise ConfigError(f"--tokenizer {name}: cannot load it ({type(e).__name__}: {str(e)[:300]})") from None


def tokenizer_of(options: dict[str, Any]) -> tuple[str, Any]:
    """(name, tokenizer) of an sft-tokenized export's `tokenizer` option (loaded once per name and models dir)."""
    name = options.get("tokenizer")
    if not name:
        raise ConfigError("the sft-tokenized export needs a tokenizer: --tokenizer MODEL (a model directory, a "
                          "hub id, or 'embedded')")
    return str(name), _tokenizer(str(name), str(options.get("_models_dir") or "data/models"))


def sft_tokenized_metadata(options: dict[str, Any]) -> dict[str, Any]:
    """An sft-tokenized export's metadata: the tokenizer_facts of its `tokenizer` option."""
    return tokenizer_facts(*tokenizer_of(options))


def sft_tokenized_export(name: str, reads: tuple[str, ...], description: str, schema: Any,
                         convert: Callable[[dict[str, list[dict]], str, dict[str, Any]], list[dict]],
                         options: dict[str, str]) -> ExportSpec:
    """The ExportSpec of an sft-tokenized export: TRL's pre-tokenized format, the `tokenizer` option after
    `options`, and sft_tokenized_metadata."""
    return ExportSpec(name, reads, description, schema, convert,
                      "pre-tokenized (`input_ids`, `labels`, `completion_mask`)",
                      {**options, "tokenizer": TOKENIZER_OPTION}, metadata=sft_tokenized_metadata)

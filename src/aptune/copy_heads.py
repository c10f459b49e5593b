"""Heads that copy from the context (induction heads), measured on repeated random tokens.

An induction head attends from a token to the token after that token's earlier occurrence, and so
lets the model continue a pattern it has seen in its context: a name, a number, a text's format.
The first-order salience of the pruning hardly sees them. A head that copies well meets a loss that
is already low on what it copies, so its gradient is small: on SmolLM2-135M with BBC News
calibration text (8 blocks of 512 tokens), the three KV groups with the highest induction score
(0.89, 0.78, 0.51) are the 5th, 9th and 21st least salient of 90; with a quarter of those blocks
rewritten so that their second half repeats the first, still the 19th, 18th and 25th
(benchmarks/results/induction_heads_smollm2.md). APT's selection (seed 0) removed the second of
them and the fifth (0.44); after tuning on BBC its structure lost the line structure of a second
text domain (a line start costs it 13x the pretrained model's perplexity;
benchmarks/results/smollm2-bbc-300steps.md, "Held-out perplexity by kind of token").

`unit_induction_scores` measures the score of every attention unit directly: the model reads random
token sequences repeated once, and each query head's mean attention from the second copy to the
token after the earlier occurrence is its score; a unit (a KV group for grouped-query attention)
scores its best query head. `aptune.config.AptConfig.keep_copy_heads` keeps every unit whose score
reaches a threshold, whatever the budget and the salience say.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["induction_from_attentions", "repeated_random_tokens", "unit_induction_scores"]

#: Tokens of each random sequence (the repeat doubles it) and sequences per measurement.
SEQUENCE_LENGTH = 64
SEQUENCES = 8


def repeated_random_tokens(
    vocab_size: int, length: int, count: int, seed: int = 0, bos: int | None = None
) -> torch.Tensor:
    """``[count, (bos) + 2 * length]`` ids: an optional BOS, then a random sequence twice.

    The ids are drawn above the first tenth of the vocabulary (at most 1000), away from the special
    and byte tokens that tokenizers put first.
    """
    low = min(1000, vocab_size // 10)
    generator = torch.Generator().manual_seed(seed)
    first = torch.randint(low, vocab_size, (count, length), generator=generator)
    head = [torch.full((count, 1), bos)] if bos is not None else []
    return torch.cat([*head, first, first], dim=1)


def induction_from_attentions(attention: torch.Tensor, length: int, offset: int) -> torch.Tensor:
    """Per-head induction score ``[heads]`` from one layer's attention ``[batch, heads, L, L]``.

    ``offset`` is the position of the first copy's first token (1 after a BOS). A query at position
    ``q`` of the second copy reads key ``q - length + 1``: the token after its earlier occurrence.
    """
    queries = torch.arange(offset + length, offset + 2 * length, device=attention.device)
    keys = queries - length + 1
    # attention[:, :, queries, keys]: [batch, heads, length] -> mean over batch and positions
    return attention[:, :, queries, keys].float().mean(dim=(0, 2))


@torch.no_grad()
def unit_induction_scores(
    model,
    unit_counts: Sequence[int],
    site_layers: Sequence[int],
    length: int = SEQUENCE_LENGTH,
    count: int = SEQUENCES,
    seed: int = 0,
) -> list[torch.Tensor]:
    """Induction score of every attention unit of a causal LM, per attention site.

    The model's decoder stack (``model.base_model``, no language-model head) runs once on
    `repeated_random_tokens` with eager attention (restored afterwards, as is its training
    mode). A unit scores the best of its query heads (the query heads of a site split evenly over
    its units, as KV groups do).

    Args:
        model: A transformers causal LM that returns ``attentions``.
        unit_counts: Units now present per attention site.
        site_layers: Decoder layer index of every attention site.
        length: Tokens of each random sequence.
        count: Sequences.
        seed: Seed of the random tokens.

    Returns:
        Per site, a ``[units]`` tensor of scores in ``[0, 1]``.
    """
    config = model.config
    bos = getattr(config, "bos_token_id", None)
    device = next(model.parameters()).device
    ids = repeated_random_tokens(config.vocab_size, length, count, seed, bos).to(device)
    implementation = config._attn_implementation
    was_training = model.training
    model.eval()
    model.set_attn_implementation("eager")
    try:
        # the decoder stack alone: the scores need its attention maps, not the vocabulary logits
        attentions = model.base_model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    finally:
        model.set_attn_implementation(implementation)
        model.train(was_training)
    offset = 1 if bos is not None else 0
    scores = []
    for units, layer in zip(unit_counts, site_layers, strict=True):
        attention = attentions[layer]
        if not units or attention is None or attention.shape[1] == 0:
            scores.append(torch.zeros(units))
            continue
        heads = induction_from_attentions(attention, length, offset).cpu()
        # [heads] -> [units, query heads per unit]: a KV group's query heads are consecutive
        scores.append(heads.view(units, -1).amax(dim=1))
    return scores

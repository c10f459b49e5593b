"""Shared fixtures: tokenizers built in memory, so no test downloads one."""

from __future__ import annotations

import string

import pytest

# Whole words used by the task tests; any other lowercase text still tokenizes (letter by letter).
_WORDS = [
    *("the", "a", "an", "cat", "dog", "sat", "on", "mat", "paris", "is", "capital", "of", "france"),
    *("what", "where", "who", "good", "bad", "fine", "film", "movie", "great", "awful", "boring"),
    *("plot", "actors", "it", "was", "not", "very", "and", "in", "city", "river", "seine", "flows"),
    *("through", "london", "england", "big", "small", "summary", "document", "source", "target"),
    *("news", "story", "short", "long"),
]


@pytest.fixture(scope="session")
def wordpiece_tokenizer():
    """A lowercase BERT (WordPiece) fast tokenizer: special tokens, letters, digits, punctuation, words."""
    from transformers import BertTokenizerFast

    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    pieces += list(string.ascii_lowercase) + [f"##{c}" for c in string.ascii_lowercase + string.digits]
    pieces += list(string.digits) + list(string.punctuation) + _WORDS
    vocab = {piece: index for index, piece in enumerate(dict.fromkeys(pieces))}
    return BertTokenizerFast(vocab=vocab)


@pytest.fixture(scope="session")
def word_tokenizer():
    """A word-level fast tokenizer (splits on spaces and punctuation) with ``<eos>`` and ``<pad>``, no BOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<pad>", "<unk>", "<eos>", *_WORDS, *string.punctuation, *string.digits]
    # The words of the Alpaca prompt template, so prompts do not tokenize to <unk>.
    words += ["below", "instruction", "describes", "task", "write", "response", "that", "appropriately"]
    words += ["completes", "request", "input", "paired", "with", "provides", "further", "context", "###"]
    vocab = {word: index for index, word in enumerate(dict.fromkeys(words))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )

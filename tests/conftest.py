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


_BPE_CORPUS = [
    "the cat sat on the mat and the dog sat on the log",
    "paris is the capital of france; the seine flows through paris",
    "a small model, pruned and tuned, still writes short stories about cats and dogs",
    "numbers like 12, 345 and 6789 are split into digits by some tokenizers",
] * 20
_BPE_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A byte-level BPE fast tokenizer (GPT-2 pre-tokenizer) with special tokens and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(_BPE_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = _BPE_CHAT_TEMPLATE
    return tokenizer

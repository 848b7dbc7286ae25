"""What a language model scores without learning anything from context: the cross-entropy of a
unigram model (token frequencies alone) of the very data a test trains on.

A loss target must beat this, not a number: a fixed threshold above the unigram entropy
(about 3.2-3.4 nats on the built-in ``stdlib-text``, byte- or character-level) is reached by
learning the frequencies of the characters only. Each helper prepares the data the way its
strategy does (same tokenizer or vocabulary, same train/validation split), fits the unigram
on the training part and scores the tokens the model predicts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from protocol.run import DataRequest
from ray_module.data.texts import load_texts, pack_blocks, split_blocks

# Added to every token's count, so a token seen only in validation has a finite loss.
SMOOTHING = 0.5


@dataclass(frozen=True)
class UnigramBaseline:
    train: float  # nats per token on the training tokens it was fitted on
    validation: float  # nats per token on the held-out tokens


def unigram_cross_entropy(fitted_on: Any, scored_on: Any, vocab_size: int) -> float:
    """Mean nats per token of a unigram model (add-``SMOOTHING`` token frequencies of
    ``fitted_on``) scoring ``scored_on``; arrays or tensors of token ids."""
    fitted = np.asarray(fitted_on).ravel()
    scored = np.asarray(scored_on).ravel()
    counts = np.bincount(fitted, minlength=vocab_size) + SMOOTHING
    log_probabilities = np.log(counts / counts.sum())
    return float(-log_probabilities[scored].mean())


def causal_lm_unigram(
    data: DataRequest, tokenizer: Any, *, seq_len: int, validation_split: float
) -> UnigramBaseline:
    """For a causal LM trained as ``data_parallel`` does (and ``test_causal_lm``): documents
    packed into blocks of ``seq_len`` and split with ``split_blocks``. The model predicts
    every token of a block but its first, so those are the tokens scored."""
    blocks = pack_blocks(load_texts(data), tokenizer, seq_len)
    train, validation = split_blocks(blocks, validation_split)
    vocab_size = len(tokenizer)
    return UnigramBaseline(
        train=unigram_cross_entropy(train, train[:, 1:], vocab_size),
        validation=unigram_cross_entropy(train, validation[:, 1:], vocab_size),
    )


def char_unigram(data: DataRequest, *, validation_split: float) -> UnigramBaseline:
    """For the ``char_rnn`` trained by ``es``: the corpus's character vocabulary, documents
    joined by the worker's break, the last ``validation_split`` of the characters held out."""
    from ray_module.models.char_rnn import encode, vocabulary_of
    from ray_module.strategies.es.evaluator import DOCUMENT_BREAK

    texts = load_texts(data)
    vocabulary = vocabulary_of(texts)
    stream = encode(DOCUMENT_BREAK.join(texts), vocabulary)
    cut = int(len(stream) * (1 - validation_split))
    train, validation = stream[:cut], stream[cut:]
    return UnigramBaseline(
        train=unigram_cross_entropy(train, train, len(vocabulary)),
        validation=unigram_cross_entropy(train, validation, len(vocabulary)),
    )

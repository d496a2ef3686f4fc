"""A character-level GPT in Keras 3 and the offline corpora it trains on.

Corpus (offline; characters are bytes, non-ASCII bytes dropped, vocabulary 128): ``stdlib``, the
Python standard library's own ``*.py`` files, sorted by path and concatenated — it needs nothing
beyond the project's install. (Debian's ``bible-kjv-text`` ships the Bible only in the ``bible``
program's compressed ``/usr/lib/bible.data``, not as plain text, so it is not offered.)

The model follows the Keras transformer fixture (tests/fixtures/build_keras_fixtures.py), which
tf2onnx exports and the toolkit reads: token and position embeddings, pre-norm blocks of
causal MultiHeadAttention and a ReLU feed-forward (exact GELU makes tf2onnx write an ``Erfc``
op that ONNX lacks), a final LayerNormalization and a Dense to the vocabulary.
"""

from __future__ import annotations

import sysconfig
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from surgery import SurgeryError

if TYPE_CHECKING:
    import keras

VOCAB = 128
CORPORA = ("stdlib",)


@dataclass(frozen=True)
class GptConfig:
    """Sizes of the character GPT: model width, blocks, heads of `key_dim`, feed-forward width."""

    model_dim: int = 64
    blocks: int = 2
    heads: int = 2
    key_dim: int = 16
    ffn: int = 128
    context: int = 64

    def grown(self, **sizes: int) -> GptConfig:
        return replace(self, **sizes)


def load_corpus(source: str | None, *, limit: int) -> tuple[np.ndarray, dict[str, object]]:
    """The first `limit` characters of corpus `source` as uint8 ids, and a description of it."""
    source = source or "stdlib"
    if source == "stdlib":
        root = Path(sysconfig.get_paths()["stdlib"])
        files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
        where = str(root)
    else:
        raise SurgeryError(f"--data must be one of {', '.join(CORPORA)} for the transformer, got {source!r}")
    chunks, size = [], 0
    for path in files:
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
        chunks.append(raw[raw < VOCAB])
        size += chunks[-1].size
        if size >= limit:
            break
    text = np.concatenate(chunks)[:limit]
    return text, {"source": source, "path": where, "characters": int(text.size), "files": len(chunks)}


def split(text: np.ndarray, validation: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Training text and the held-out tail (the last `validation` fraction, never trained on)."""
    cut = int(text.size * (1 - validation))
    return text[:cut], text[cut:]


def windows(text: np.ndarray, count: int, context: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`count` random windows: ids (count, context) and next-character targets."""
    starts = rng.integers(0, text.size - context - 1, size=count)
    index = starts[:, None] + np.arange(context + 1)[None, :]
    chunk = text[index].astype(np.int64)
    return chunk[:, :-1], chunk[:, 1:]


def gpt(config: GptConfig) -> keras.Model:
    """The character GPT for `config` (uncompiled; input ``input_ids``, logits out)."""
    import keras

    c = config
    ids = keras.Input((None,), dtype="int64", name="input_ids")
    tokens = keras.layers.Embedding(VOCAB, c.model_dim, name="token_embedding")(ids)
    positions = keras.ops.cumsum(keras.ops.ones_like(ids), axis=1) - 1
    x = keras.layers.Add(name="embed_add")(
        [tokens, keras.layers.Embedding(c.context, c.model_dim, name="position_embedding")(positions)]
    )
    for i in range(c.blocks):
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_ln1")(x)
        h = keras.layers.MultiHeadAttention(c.heads, c.key_dim, name=f"block{i}_mha")(h, h, use_causal_mask=True)
        x = keras.layers.Add(name=f"block{i}_attn_add")([x, h])
        h = keras.layers.LayerNormalization(epsilon=1e-5, name=f"block{i}_ln2")(x)
        h = keras.layers.Dense(c.ffn, activation="relu", name=f"block{i}_ffn_up")(h)
        h = keras.layers.Dense(c.model_dim, name=f"block{i}_ffn_down")(h)
        x = keras.layers.Add(name=f"block{i}_ffn_add")([x, h])
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_ln")(x)
    return keras.Model(ids, keras.layers.Dense(VOCAB, name="lm_head")(x), name="char_gpt")


def compile_lm(model: keras.Model, *, learning_rate: float) -> keras.Model:
    """Adam (a fresh state) and next-character cross-entropy in nats."""
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def bits_per_character(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    """Mean next-character cross-entropy on (x, y) in bits."""
    import keras

    logits = model(x, training=False)
    nats = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    return float(np.asarray(nats)) / np.log(2.0)


def parameter_count(model: keras.Model) -> int:
    return int(sum(np.prod(w.shape) for w in model.weights))

"""Content vectors: gensim Doc2Vec over each item's title, genres and text.

Document tags are id-registry item indices, so ``item_vectors()[idx]`` is the vector of the
item the registry calls ``idx``. Artifacts are written without pickle: the vocabulary as JSON
and the weight matrices as a plain ``.npz``; loading rebuilds an identical gensim model (same
vocabulary order, same negative-sampling table), so inference gives the same vectors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np
from gensim.models.doc2vec import Doc2Vec, TaggedDocument

from streamrec.core.datasets import Item
from streamrec.core.errors import InvalidInput
from streamrec.core.ids import IdKind, IdRegistry

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.json"
ARRAYS_FILE = "arrays.npz"
_TOKEN = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class Doc2VecConfig:
    vector_size: int = 64
    window: int = 5
    min_count: int = 1
    epochs: int = 40
    dm: int = 0  # PV-DBOW: robust on short texts such as titles and genre lists
    dbow_words: int = 1  # train word vectors too, so words in new texts carry meaning
    negative: int = 5
    sample: float = 0.0  # no down-sampling: texts are short and every word counts
    seed: int = 0
    workers: int = 1  # one worker makes training reproducible for a seed
    n_items: int = 0  # id-registry size at training


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


def item_text(item: Item) -> str:
    return " ".join([item.title, *item.genres, item.text])


class Doc2VecModel:
    def __init__(self, config: Doc2VecConfig | None = None) -> None:
        self.config = config or Doc2VecConfig()
        self._model: Doc2Vec | None = None
        self._item_vectors = np.zeros((self.config.n_items, self.config.vector_size), np.float32)

    def _gensim_kwargs(self) -> dict[str, Any]:
        c = self.config
        return {
            "vector_size": c.vector_size,
            "window": c.window,
            "min_count": c.min_count,
            "epochs": c.epochs,
            "dm": c.dm,
            "dbow_words": c.dbow_words,
            "negative": c.negative,
            "sample": c.sample,
            "seed": c.seed,
            "workers": c.workers,
        }

    def fit(self, items: dict[str, Item], registry: IdRegistry) -> Self:
        """Train on every item's text; tags are the registry's item indices."""
        index = registry.assign(IdKind.ITEM, items)
        docs = [
            TaggedDocument(tokenize(item_text(item)), [index[item_id]])
            for item_id, item in items.items()
        ]
        docs = [d for d in docs if d.words]
        if not docs:
            raise InvalidInput("no item has any text (title, genres or text) to learn from")
        n_items = registry.size(IdKind.ITEM)
        self.config = Doc2VecConfig(**{**asdict(self.config), "n_items": n_items})
        model = Doc2Vec(**self._gensim_kwargs())
        model.build_vocab(docs)
        model.train(docs, total_examples=len(docs), epochs=model.epochs)
        self._model = model
        vectors = np.zeros((n_items, self.config.vector_size), dtype=np.float32)
        tags = [d.tags[0] for d in docs]
        vectors[tags] = model.dv.vectors[tags]
        self._item_vectors = vectors
        return self

    @property
    def model(self) -> Doc2Vec:
        if self._model is None:
            raise InvalidInput("the Doc2Vec model is not trained or loaded yet")
        return self._model

    def item_vectors(self) -> np.ndarray:
        """(n_items, vector_size); rows of items without text (or newer than the model) are 0."""
        return self._item_vectors

    def infer(self, text: str) -> np.ndarray:
        """(vector_size,) vector of a new text; the same text always gives the same vector."""
        # gensim draws negatives from model.random: reset it so inference is reproducible.
        self.model.random = np.random.RandomState(self.config.seed)
        return self.model.infer_vector(tokenize(text)).astype(np.float32)

    def infer_many(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), vector_size); row i equals ``infer(texts[i])``."""
        out = np.zeros((len(texts), self.config.vector_size), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = self.infer(text)
        return out

    # -- artifacts (no pickle) ----------------------------------------------------------------
    def save_artifacts(self, directory: Path) -> dict[str, Any]:
        model = self.model
        words = list(model.wv.index_to_key)
        vocab = {
            "words": words,
            "counts": [int(model.wv.get_vecattr(w, "count")) for w in words],
            "sample_int": [int(model.wv.get_vecattr(w, "sample_int")) for w in words],
        }
        config = asdict(self.config)
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True))
        (directory / VOCAB_FILE).write_text(json.dumps(vocab))
        np.savez(
            directory / ARRAYS_FILE,
            wv=model.wv.vectors,
            syn1neg=model.syn1neg,
            items=self._item_vectors,
        )
        return config

    @classmethod
    def load_artifacts(cls, directory: Path) -> Self:
        config = Doc2VecConfig(**json.loads((directory / CONFIG_FILE).read_text()))
        vocab = json.loads((directory / VOCAB_FILE).read_text())
        with np.load(directory / ARRAYS_FILE, allow_pickle=False) as arrays:
            wv, syn1neg, items = arrays["wv"], arrays["syn1neg"], arrays["items"]
        self = cls(config)
        model = Doc2Vec(**self._gensim_kwargs())
        words = vocab["words"]
        model.build_vocab_from_freq(dict(zip(words, vocab["counts"], strict=True)))
        # build_vocab_from_freq may order equal counts differently: restore the saved order,
        # then rebuild the negative-sampling table from it.
        model.wv.index_to_key = list(words)
        model.wv.key_to_index = {w: i for i, w in enumerate(words)}
        for attr in ("count", "sample_int"):  # per-word arrays, in the restored order
            saved = vocab["counts" if attr == "count" else attr]
            model.wv.expandos[attr] = np.asarray(saved, dtype=model.wv.expandos[attr].dtype)
        model.make_cum_table()
        model.wv.vectors[:] = wv
        model.syn1neg[:] = syn1neg
        self._model = model
        self._item_vectors = items.astype(np.float32)
        return self

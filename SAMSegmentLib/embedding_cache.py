"""Least-recently-used cache of image embeddings under a byte budget."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable

from .models.base import Embedding

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 512 * 1024 * 1024


class EmbeddingCache:
    """Maps a key (volume uid, version, axis, index, window, model) to an Embedding.

    ``computed`` counts encoder runs through ``get_or_compute`` (tests use it); ``budget_bytes`` bounds the
    total ``Embedding.nbytes`` held. An entry larger than the whole budget is returned but not kept.
    """

    def __init__(self, budget_bytes: int = DEFAULT_BUDGET_BYTES) -> None:
        self.budget_bytes = int(budget_bytes)
        self._items: OrderedDict[Hashable, Embedding] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.computed = 0
        self.hits = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def get(self, key: Hashable) -> Embedding | None:
        with self._lock:
            emb = self._items.get(key)
            if emb is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return emb

    def put(self, key: Hashable, emb: Embedding) -> None:
        size = emb.nbytes
        with self._lock:
            if key in self._items:
                self._bytes -= self._items.pop(key).nbytes
            if size > self.budget_bytes:
                log.debug("embedding of %d bytes exceeds the cache budget; not cached", size)
                return
            self._items[key] = emb
            self._bytes += size
            while self._bytes > self.budget_bytes and self._items:
                _, old = self._items.popitem(last=False)
                self._bytes -= old.nbytes

    def get_or_compute(self, key: Hashable, compute: Callable[[], Embedding]) -> Embedding:
        emb = self.get(key)
        if emb is None:
            emb = compute()
            self.computed += 1
            self.put(key, emb)
        return emb

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

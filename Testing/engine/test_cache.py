"""Embedding cache: a second prompt on a cached slice does not re-encode; the byte budget holds."""

from __future__ import annotations

import numpy as np
from doubles import BoxModel

from SAMSegmentLib.embedding_cache import EmbeddingCache
from SAMSegmentLib.predictor import SlicePredictor
from SAMSegmentLib.prompts import SlicePrompt
from SAMSegmentLib.volume import Volume
from SAMSegmentLib.windowing import Window


def _volume() -> Volume:
    rng = np.random.default_rng(1)
    return Volume(rng.integers(0, 1000, size=(12, 48, 40)).astype(np.int16), np.diag([0.8, 0.8, 2.0, 1.0]))


def test_second_prompt_reuses_embedding():
    model = BoxModel()
    predictor = SlicePredictor(model, _volume())
    predictor.predict("K", 3, SlicePrompt(box=[5, 5, 20, 20]))
    predictor.predict("K", 3, SlicePrompt(points=[[10, 10]], labels=[1]))
    predictor.predict("K", 3, SlicePrompt(box=[2, 2, 30, 30]))
    assert model.encode_calls == 1 and predictor.cache.computed == 1 and predictor.cache.hits == 2
    predictor.predict("J", 3, SlicePrompt(box=[5, 2, 20, 8]))  # another axis is another image
    assert model.encode_calls == 2


def test_cache_key_changes_with_window_and_volume_version():
    model = BoxModel()
    volume = _volume()
    predictor = SlicePredictor(model, volume, window=Window(0, 500))
    predictor.predict("K", 1, SlicePrompt(box=[5, 5, 9, 9]))
    predictor.window = Window(0, 900)
    predictor.predict("K", 1, SlicePrompt(box=[5, 5, 9, 9]))
    volume.touch()
    predictor.predict("K", 1, SlicePrompt(box=[5, 5, 9, 9]))
    assert model.encode_calls == 3


def test_budget_holds_and_evicts_least_recently_used():
    model = BoxModel()
    volume = _volume()
    one = model.encode(np.zeros((48, 40), np.uint8)).nbytes
    cache = EmbeddingCache(budget_bytes=3 * one + one // 2)
    predictor = SlicePredictor(model, volume, cache=cache)
    for k in range(6):
        predictor.embedding("K", k)
        assert cache.nbytes <= cache.budget_bytes
    assert len(cache) == 3
    predictor.embedding("K", 3)  # still cached: no encode
    before = model.encode_calls
    predictor.embedding("K", 0)  # evicted: encodes again
    assert model.encode_calls == before + 1


def test_prefetch_computes_ahead_and_skips_cached():
    model = BoxModel()
    predictor = SlicePredictor(model, _volume())
    assert predictor.prefetch("K", [0, 1, 2, 99]) == 3
    assert predictor.prefetch("K", [1, 2, 3]) == 1
    calls = model.encode_calls
    predictor.predict("K", 2, SlicePrompt(box=[1, 1, 5, 5]))
    assert model.encode_calls == calls

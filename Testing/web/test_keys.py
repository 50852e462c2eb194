"""Key strokes -> actions (SAMSegmentWeb/keys.py): both key-name families, one action per stroke."""

from __future__ import annotations

import pytest

from SAMSegmentWeb.keys import APPLY, CLEAR_SLICE, PROPAGATE, REMOVE_LAST, KeyStrokes, action_for_key


@pytest.mark.parametrize("key, action", [
    ("Return", APPLY), ("KP_Enter", APPLY), ("Enter", APPLY),  # VTK / X11, keypad, DOM
    ("BackSpace", REMOVE_LAST), ("Backspace", REMOVE_LAST), ("x", REMOVE_LAST),
    ("Delete", CLEAR_SLICE), ("p", PROPAGATE),
])
def test_both_key_name_families(key, action):
    assert action_for_key(key) == action


@pytest.mark.parametrize("key", ["P", "X", "z", "Escape", "space", " ", "", None, "Shift", "y", "1"])
def test_other_keys_are_not_ours(key):
    assert action_for_key(key) is None


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_keydown_and_keypress_of_one_stroke_act_once():
    clock = Clock()
    strokes = KeyStrokes(clock=clock)
    assert strokes.press("Enter") == APPLY  # DOM keydown
    clock.t += 0.002
    assert strokes.press("Enter") is None  # DOM keypress of the same stroke
    strokes.release("Enter")
    clock.t += 0.2
    assert strokes.press("Enter") == APPLY  # the next stroke


def test_held_key_repeats_are_swallowed_until_release():
    clock = Clock()
    strokes = KeyStrokes(clock=clock)
    assert strokes.press("BackSpace") == REMOVE_LAST
    for _ in range(5):
        clock.t += 0.03
        assert strokes.press("BackSpace") is None
    strokes.release("BackSpace")
    assert strokes.press("BackSpace") == REMOVE_LAST


def test_a_lost_release_does_not_block_the_key_for_good():
    clock = Clock()
    strokes = KeyStrokes(repeat_guard_s=1.0, clock=clock)
    assert strokes.press("p") == PROPAGATE
    clock.t += 1.5
    assert strokes.press("p") == PROPAGATE


def test_strokes_of_different_keys_are_independent():
    strokes = KeyStrokes(clock=Clock())
    assert strokes.press("x") == REMOVE_LAST
    assert strokes.press("Delete") == CLEAR_SLICE
    assert strokes.press("x") is None

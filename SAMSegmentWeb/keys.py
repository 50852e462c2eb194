"""Key strokes -> effect actions, once per stroke. Pure Python.

The browser's events reach VTK through vtk.js and vtkRemoteInteractionAdapter: a DOM ``keydown`` and, for keys that
produce a character (Enter, p, x), a DOM ``keypress`` as well; both become a VTK KeyPressEvent, so one Enter stroke
arrives twice (measured with vtkRemoteInteractionAdapter.ProcessEvent). The ``keyup`` arrives once, as a
KeyReleaseEvent. Key names come as DOM names (``Enter``, ``Backspace``, ``Delete``) from the browser and as X11/VTK
key symbols (``Return``, ``BackSpace``, ``KP_Enter``) from desktop interactors; both families are accepted.

A stroke acts on its first KeyPressEvent; further KeyPressEvents of the same key are ignored until its
KeyReleaseEvent (which also swallows auto-repeat while a key is held) or, should a release be lost, until
``repeat_guard_s`` has passed. Keep one KeyStrokes per view: trame-rca listens for ``keyup`` on the document, so
every view receives the release of a key pressed in one of them, in no fixed order relative to that view's events
(measured: the other views' releases arrived between the focused view's two KeyPressEvents).
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["ACTIONS", "KeyStrokes", "action_for_key"]

APPLY, PROPAGATE, REMOVE_LAST, CLEAR_SLICE = "apply", "propagate", "remove_last", "clear_slice"

# normalised key name (lower case) -> action; the same keys as the desktop effect (SegmentEditorEffect.onKey)
ACTIONS: dict[str, str] = {
    "return": APPLY,  # VTK / X11
    "enter": APPLY,  # DOM
    "kp_enter": APPLY,
    "p": PROPAGATE,
    "backspace": REMOVE_LAST,  # VTK 'BackSpace' and DOM 'Backspace'
    "x": REMOVE_LAST,
    "delete": CLEAR_SLICE,  # VTK and DOM
}


def action_for_key(key: str | None) -> str | None:
    """The effect action bound to a key name of either family, or None."""
    if not key:
        return None
    name = str(key).strip()
    if len(name) == 1 and name.isupper():
        return None  # Shift+P / Shift+X are not ours (the desktop binds the lower-case keys only)
    return ACTIONS.get(name.lower())


class KeyStrokes:
    """Collapses the duplicate KeyPressEvents of one stroke into one action."""

    def __init__(self, repeat_guard_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.repeat_guard_s = float(repeat_guard_s)
        self._clock = clock
        self._down: dict[str, float] = {}  # normalised key -> time of the press that acted

    def press(self, key: str | None) -> str | None:
        """A KeyPressEvent: the action to run now, or None (not our key, or a duplicate of this stroke)."""
        action = action_for_key(key)
        if action is None:
            return None
        name = str(key).lower()
        now = self._clock()
        acted = self._down.get(name)
        if acted is not None and now - acted < self.repeat_guard_s:
            return None
        self._down[name] = now
        return action

    def release(self, key: str | None) -> None:
        """A KeyReleaseEvent: the stroke is over."""
        if key:
            self._down.pop(str(key).lower(), None)

    def reset(self) -> None:
        self._down.clear()

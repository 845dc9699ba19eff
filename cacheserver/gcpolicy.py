"""How the server uses Python's cyclic garbage collector, so that a big cache does not slow every request.

A full (oldest-generation) collection walks every container object the process holds; a cache of 100k
objects is about a million of them, half a second a walk. Cached objects die by reference count when
evicted (they form no cycles), so walking them finds nothing. After a full collection has left a large
old generation, it is frozen (`gc.freeze`): later collections skip it and walk only what came after.
Objects frozen while alive that later become cyclic garbage (a connection, a discarded VCL) would stay
until thawed, so once the frozen set has doubled since the last thaw it is thawed before a full
collection, which then walks (and frees) all of it once: the walks of everything stay as rare, per
object added, as Python's own rule (a full collection when the old generation grew by a quarter).
"""

from __future__ import annotations

import gc

FREEZE_MIN = 100_000      # old-generation objects worth freezing after a full collection
GEN0_THRESHOLD = 7000     # young collections 10x rarer than Python's default: fewer survivors promoted


class GcPolicy:
    """Installed once per serving process (`install`); `uninstall` restores Python's defaults."""

    def __init__(self, freeze_min: int = FREEZE_MIN) -> None:
        self.freeze_min = freeze_min
        self.base = 0             # objects frozen right after the last thaw
        self.freezes = 0
        self.thaws = 0
        self._old_threshold = gc.get_threshold()

    def install(self) -> None:
        gc.collect()
        gc.freeze()               # the startup heap (modules, compiled VCL): never garbage
        self.base = gc.get_freeze_count()
        gc.set_threshold(GEN0_THRESHOLD, *self._old_threshold[1:])
        gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
        gc.set_threshold(*self._old_threshold)
        gc.unfreeze()

    def _callback(self, phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            if gc.get_freeze_count() >= 2 * self.base + self.freeze_min:
                gc.unfreeze()     # this collection walks everything once, freeing frozen cycles
                self.base = -1
                self.thaws += 1
        elif len(gc.get_objects(generation=2)) >= self.freeze_min:
            gc.freeze()
            self.freezes += 1
            if self.base < 0:
                self.base = gc.get_freeze_count()

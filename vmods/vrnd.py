"""Varnish's "testable" random numbers (libvarnish vrnd.c, 7.1).

varnishd draws the random director's picks, std.random() and the shard director's rampup/warmup
dice from its own copy of BSD random(3) (TYPE_3: x**31 + x**3 + 1), so that `debug.srandom [seed]`
makes them repeat exactly on every platform. This is that generator: seeded with the Park-Miller
"minimal standard" generator, the first 310 outputs discarded, each output 31 bits.

At start it is seeded from the OS's entropy, as VRND_SeedAll does.
"""

from __future__ import annotations

import math
import os
import threading

_DEG = 31          # words of state
_SEP = 3           # distance between the two taps
_MASK32 = 0xFFFFFFFF


def _good_rand(ctx: int) -> int:
    """(7^5 * x) mod (2^31 - 1), with varnishd's shift of the input and output range."""
    x = (ctx % 0x7FFFFFFE) + 1
    hi, lo = divmod(x, 127773)
    x = 16807 * lo - 2836 * hi
    if x < 0:
        x += 0x7FFFFFFF
    return x - 1


class TestableRandom:
    """One generator shared by the whole server (varnishd's is process-wide, behind a lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = [0] * _DEG
        self._f = _SEP
        self._r = 0
        self.seed(int.from_bytes(os.urandom(4), "little"))

    def seed(self, x: int) -> None:
        """VRND_SeedTestable."""
        with self._lock:
            state = self._state
            state[0] = x & _MASK32
            for i in range(1, _DEG):
                state[i] = _good_rand(state[i - 1])
            self._f, self._r = _SEP, 0
            for _ in range(10 * _DEG):
                self._next()

    def _next(self) -> int:
        state, f, r = self._state, self._f, self._r
        state[f] = (state[f] + state[r]) & _MASK32
        value = state[f] >> 1          # the least random bit is dropped
        f += 1
        if f >= _DEG:
            f = 0
            r += 1
        else:
            r += 1
            if r >= _DEG:
                r = 0
        self._f, self._r = f, r
        return value

    def random(self) -> int:
        """VRND_RandomTestable: 0 <= n < 2**31."""
        with self._lock:
            return self._next()

    def fraction(self) -> float:
        """scalbn(VRND_RandomTestable(), -31): 0 <= x < 1 from one draw (the random director)."""
        return math.ldexp(self.random(), -31)

    def double(self) -> float:
        """VRND_RandomTestableDouble: 0 <= x < 1 from two draws (std.random, shard rampup/warmup)."""
        with self._lock:
            return math.ldexp(self._next(), -31) + math.ldexp(self._next(), -62)


TESTABLE = TestableRandom()

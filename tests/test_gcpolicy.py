"""The server's garbage-collector policy: a big old generation is frozen after a full collection, and
thawed (so frozen cycles are freed) once the frozen set has doubled."""

import gc
import weakref

import pytest

from cacheserver.gcpolicy import GcPolicy


class Node:
    def __init__(self) -> None:
        self.me = self          # a reference cycle: only the cyclic collector frees it


@pytest.fixture
def policy():
    p = GcPolicy(freeze_min=1000)
    p.install()
    yield p
    p.uninstall()


def test_a_big_old_generation_is_frozen_after_a_full_collection(policy):
    frozen = gc.get_freeze_count()
    keep = [[i] for i in range(5000)]
    gc.collect()
    assert policy.freezes == 1
    assert gc.get_freeze_count() >= frozen + 5000
    assert len(gc.get_objects(generation=2)) < 1000
    del keep


def test_a_small_old_generation_is_not_frozen(policy):
    gc.collect()
    frozen = gc.get_freeze_count()
    keep = [[i] for i in range(10)]
    gc.collect()
    assert policy.freezes == 0 and gc.get_freeze_count() == frozen
    del keep


def test_frozen_cycles_are_freed_once_the_frozen_set_doubled(policy):
    node = Node()
    ref = weakref.ref(node)
    ballast = [[i] for i in range(2000)]    # enough old objects to be frozen with it
    gc.collect()                       # node is old now; this freeze holds it
    frozen_with_node = gc.get_freeze_count()
    del node
    gc.collect()
    assert ref() is not None           # frozen: not walked, not freed
    grow = []
    while gc.get_freeze_count() < 2 * policy.base + policy.freeze_min:
        grow.append([[i] for i in range(frozen_with_node)])
        gc.collect()
    gc.collect()                       # thaws first, then walks everything
    assert policy.thaws == 1
    assert ref() is None
    del ballast, grow


def test_uninstall_restores_the_defaults():
    threshold = gc.get_threshold()
    p = GcPolicy()
    p.install()
    assert gc.get_threshold() != threshold and p._callback in gc.callbacks
    p.uninstall()
    assert gc.get_threshold() == threshold and p._callback not in gc.callbacks
    assert gc.get_freeze_count() == 0

"""The controller's cache orders versions of an object only by what the watch delivers.

resourceVersions are opaque: none of these cases may depend on their values being
numbers that grow. Each writes versions named so that comparing them as strings or as
integers would give the wrong answer.
"""

from __future__ import annotations

from typing import Any

from hone_operator.cache import ObjectCache

KEY = ("team-a", "job")


def obj(rv: str, uid: str = "u1", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "job", "namespace": "team-a", "uid": uid, "resourceVersion": rv},
            "status": status}


def test_watch_events_before_the_own_write_do_not_bring_back_an_older_version() -> None:
    cache: ObjectCache = ObjectCache()
    assert cache.observed(KEY, obj("b7", phase="Queued"))
    assert cache.written(KEY, obj("a3", phase="Running"))  # the answer to the controller's status patch
    assert not cache.observed(KEY, obj("zz", phase="Queued"))  # someone's earlier write, still in the watch
    assert cache.get(KEY)["status"]["phase"] == "Running"
    assert cache.observed(KEY, obj("a3", phase="Running"))  # the write's own event: the watch caught up
    assert cache.observed(KEY, obj("0", phase="Succeeded"))  # and is followed again from there
    assert cache.get(KEY)["status"]["phase"] == "Succeeded"


def test_an_answer_the_watch_has_already_overtaken_is_not_stored() -> None:
    cache: ObjectCache = ObjectCache()
    cache.observed(KEY, obj("10"))
    cache.observed(KEY, obj("9", phase="Running"))  # our write's event arrived before its answer
    cache.observed(KEY, obj("11", phase="Succeeded"))  # and another write after it
    assert not cache.written(KEY, obj("9", phase="Running"))
    assert cache.get(KEY)["status"]["phase"] == "Succeeded"
    assert cache.observed(KEY, obj("12", phase="Succeeded"))  # nothing is left pending


def test_a_write_that_changed_nothing_leaves_nothing_pending() -> None:
    cache: ObjectCache = ObjectCache()
    cache.observed(KEY, obj("5", phase="Queued"))
    cache.written(KEY, obj("5", phase="Queued"))  # a no-op patch returns the same version; no event follows
    assert cache.observed(KEY, obj("6", phase="Running"))


def test_a_relist_is_the_current_state_and_clears_what_was_pending() -> None:
    cache: ObjectCache = ObjectCache()
    cache.observed(KEY, obj("1"))
    cache.written(KEY, obj("2", phase="Running"))
    # The watch expired (410 Gone) and kopf listed again: our version's event never comes.
    assert cache.observed(KEY, obj("4", phase="Succeeded"), listing=True)
    assert cache.observed(KEY, obj("5", phase="Succeeded"))


def test_a_recreated_object_is_not_held_back_by_its_predecessor() -> None:
    cache: ObjectCache = ObjectCache()
    cache.observed(KEY, obj("1", uid="old"))
    cache.written(KEY, obj("2", uid="old", phase="Running"))
    cache.forget(KEY, obj("2", uid="old"))
    assert cache.observed(KEY, obj("3", uid="new"))
    cache.observed(KEY, obj("4", uid="new", phase="Queued"))
    assert cache.get(KEY)["metadata"]["uid"] == "new"


def test_written_answers_for_deleted_objects_are_not_brought_back() -> None:
    cache: ObjectCache = ObjectCache()
    assert not cache.written(KEY, obj("3"), only_known=True)
    assert cache.get(KEY) is None
    cache.observed(KEY, obj("1"))
    cache.forget(KEY, obj("1", uid="someone-else"))  # not the object the cache holds: kept
    assert cache.get(KEY) is not None

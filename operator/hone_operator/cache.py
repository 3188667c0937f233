"""The controller's view of the objects it watches, fed by watch events and by its own writes.

resourceVersions are opaque (the API conventions allow only equality checks on
them), so this cache never orders two versions by value. What it uses instead
is the one ordering a watch guarantees: the events of one object arrive in
the order the writes happened. When the controller writes an object, it keeps
the answer (so the next reconcile does not act on what it has just changed)
and remembers that answer's resourceVersion as *pending*. Watch events for
that object are then versions from before the write, until the event whose
resourceVersion equals the pending one arrives; those earlier events are
dropped, and from the pending one on the watch is followed again. A relist
(kopf's initial listing or a watch restarted after ``410 Gone``) is the
current state by definition and clears what was pending.

An answer whose resourceVersion the watch has already delivered (the watch
overtook the write's reply) is not stored: the cache holds that version or a
later one. The last few versions delivered per object are remembered for
that. A write that changed nothing returns a version the cache already holds
and leaves nothing pending (no watch event would ever match it).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Generic, Hashable, Iterator, TypeVar

K = TypeVar("K", bound=Hashable)

#: Versions per object remembered as delivered by the watch (far more than arrive during one write).
SEEN_VERSIONS = 32


def resource_version(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("resourceVersion")


def uid(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("uid")


class ObjectCache(Generic[K]):
    """Objects by key; the caller holds the controller's lock around every call."""

    def __init__(self) -> None:
        self._objects: dict[K, dict[str, Any]] = {}
        self._pending: dict[K, str] = {}
        self._seen: dict[K, deque[str]] = {}

    def observed(self, key: K, obj: dict[str, Any], listing: bool = False) -> bool:
        """A watch event (``listing``: from a list, not a change). True when it was stored."""
        pending = self._pending.get(key)
        if pending is not None and not listing and uid(obj) == uid(self._objects.get(key)):
            if resource_version(obj) != pending:
                return False  # a version from before the controller's own write
        self._pending.pop(key, None)
        self._objects[key] = obj
        rv = resource_version(obj)
        if rv is not None:
            self._seen.setdefault(key, deque(maxlen=SEEN_VERSIONS)).append(rv)
        return True

    def written(self, key: K, obj: dict[str, Any] | None, only_known: bool = False) -> bool:
        """The answer to the controller's own create or patch. With ``only_known``, an object the
        cache no longer holds (deleted meanwhile) is not brought back. True when stored."""
        if not obj or (only_known and key not in self._objects):
            return False
        rv = resource_version(obj)
        if rv is not None and rv in self._seen.get(key, ()):
            return False  # the watch delivered this version already: the cache holds it or a later one
        if rv is not None and rv != resource_version(self._objects.get(key)):
            self._pending[key] = rv
        self._objects[key] = obj
        return True

    def forget(self, key: K, obj: dict[str, Any] | None = None) -> None:
        """Drop a deleted object; given ``obj``, only if the cache still holds that object (same uid)
        and not already its successor of the same name."""
        if obj is not None and uid(self._objects.get(key)) != uid(obj):
            return
        self._objects.pop(key, None)
        self._pending.pop(key, None)
        self._seen.pop(key, None)

    def get(self, key: K) -> dict[str, Any] | None:
        return self._objects.get(key)

    def __contains__(self, key: object) -> bool:
        return key in self._objects

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._objects))

    def items(self) -> list[tuple[K, dict[str, Any]]]:
        return list(self._objects.items())

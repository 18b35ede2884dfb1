"""Per-robot, per-episode policy state for the server: one :class:`~vla_adp.policy.Session` per id.

ADP's gate reads the motion windows of *this* robot's *current* episode, so every client keeps its
own pruner copy and query counter. Semantics:

* ``start(id)`` begins an episode: creates the session if the id is unknown, else resets it.
* ``get(id)`` returns a live session or ``None``; an unknown or expired id is not silently re-created
  (that would reset the gate mid-episode without anyone noticing) — the client must ``start`` it.
* Requests without an id (unchanged OpenVLA-OFT clients) get an *anonymous* session per client
  address, ``anon-<address>`` (:func:`anonymous_id`), so two robots on two machines never share gate
  history. Such clients mark no episode boundaries, so :meth:`SessionStore.get_anonymous` starts a new
  episode itself when the instruction changes or the client was silent for ``gap`` seconds; robots
  that share one address, or run the same task back to back, must send a session id (or POST /reset).
* Sessions idle for longer than ``ttl`` seconds expire; at most ``max_sessions`` live at once.
* ``on_end(id)`` is called when an episode of a known session ends: its ``start`` again, or its
  expiry (the server finishes that episode's video there).

Not thread-safe by itself: the server only touches it while holding the model lock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from vla_adp.policy import Session

ANON_PREFIX = "anon-"


def anonymous_id(address: str | None) -> str:
    """The session of requests without an id from client ``address`` (an IP; ``None`` = unknown)."""
    return ANON_PREFIX + (address or "unknown")


@dataclass
class Entry:
    session: Session
    last_used: float
    queries: int = 0
    instruction: str | None = None  # of the last query (anonymous sessions' episode rule)


class SessionFull(Exception):
    """No room for another live session."""


class SessionStore:
    """Live sessions by id, with idle expiry.

    Args:
        factory: makes a fresh session (``Policy.new_session``).
        ttl: seconds of inactivity after which a session expires.
        max_sessions: most live sessions at once.
        clock: monotonic seconds (injectable so tests can move time).
        on_end: called with the id whenever an episode of an existing session ends.
    """

    def __init__(self, factory: Callable[[], Session], ttl: float, max_sessions: int,
                 clock: Callable[[], float] = time.monotonic, on_end: Callable[[str], None] | None = None):
        self.factory, self.ttl, self.max_sessions, self.clock = factory, ttl, max_sessions, clock
        self.on_end = on_end
        self.entries: dict[str, Entry] = {}
        self.expired_total = 0

    def start(self, sid: str) -> bool:
        """Begin an episode for ``sid``; True when the session was created, False when reset."""
        self.expire()
        entry = self.entries.get(sid)
        if entry is not None:
            self._ended(sid)
            entry.session.reset()
            entry.last_used, entry.queries = self.clock(), 0
            return False
        if len(self.entries) >= self.max_sessions:
            raise SessionFull(f"{len(self.entries)} live sessions (limit {self.max_sessions})")
        self.entries[sid] = Entry(self.factory(), self.clock())
        return True

    def get(self, sid: str) -> Entry | None:
        """The live session ``sid`` (touched), else None."""
        self.expire()
        entry = self.entries.get(sid)
        if entry is not None:
            entry.last_used = self.clock()
        return entry

    def get_anonymous(self, sid: str, instruction: str, gap: float) -> tuple[Entry, bool]:
        """The anonymous session ``sid`` (created on demand, may raise :class:`SessionFull`) and whether
        this query starts a new episode: the session is new, the instruction differs from its previous
        query's, or it was idle for more than ``gap`` seconds."""
        self.expire()
        entry = self.entries.get(sid)
        new = entry is None or (entry.queries > 0 and (entry.instruction != instruction
                                                      or self.clock() - entry.last_used > gap))
        if new:
            self.start(sid)
            entry = self.entries[sid]
        entry.last_used, entry.instruction = self.clock(), instruction
        return entry, new

    def expire(self) -> list[str]:
        """Drop sessions idle for longer than ``ttl``; returns their ids."""
        now = self.clock()
        gone = [sid for sid, e in self.entries.items() if now - e.last_used > self.ttl]
        for sid in gone:
            del self.entries[sid]
            self._ended(sid)
        self.expired_total += len(gone)
        return gone

    def _ended(self, sid: str) -> None:
        if self.on_end is not None:
            self.on_end(sid)

    def live(self) -> int:
        """Sessions not yet past their TTL (read-only: safe without the model lock)."""
        now = self.clock()
        return sum(now - e.last_used <= self.ttl for e in list(self.entries.values()))

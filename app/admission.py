"""A server-wide cap on concurrent browser sessions.

Every session builds the whole dashboard (0.7-2 s of server time and a few MB) and may start
heavy jobs; without a cap, enough open tabs exhaust the server for everyone. `admit` counts a
session in when there is room and out again when Bokeh destroys it (closed, or discarded unused);
a session over the cap gets a one-line page saying so instead of a dashboard, which costs
almost nothing. The cap is STREAMSSM_MAX_SESSIONS (default `DEFAULT_MAX_SESSIONS`; 0: no cap),
read once per process. Shared by all sessions on purpose: it is the server's, not a user's.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("streamssm.app")

DEFAULT_MAX_SESSIONS = 40


class Admission:
    """Counts live sessions against a cap (thread-safe)."""

    def __init__(self, cap: int):
        self.cap = int(cap)
        self._live: set[str] = set()
        self._lock = threading.Lock()

    @property
    def live(self) -> int:
        with self._lock:
            return len(self._live)

    def admit(self, session_id: str) -> bool:
        """Count the session in (True), or refuse it (False) when the cap is reached."""
        with self._lock:
            if self.cap > 0 and len(self._live) >= self.cap and session_id not in self._live:
                log.info("session %s refused: %d sessions open, the cap is %d", session_id, len(self._live),
                         self.cap)
                return False
            self._live.add(session_id)
            return True

    def release(self, session_id: str) -> None:
        with self._lock:
            self._live.discard(session_id)

    def message(self) -> str:
        return (f"The server has as many sessions open as it serves at once ({self.cap}). "
                "Please try again in a few minutes, or close another tab of this app.")


def _cap_from_environment() -> int:
    raw = os.environ.get("STREAMSSM_MAX_SESSIONS", str(DEFAULT_MAX_SESSIONS))
    try:
        cap = int(raw)
    except ValueError:
        log.warning("STREAMSSM_MAX_SESSIONS=%r is not a whole number; using %d", raw, DEFAULT_MAX_SESSIONS)
        return DEFAULT_MAX_SESSIONS
    return max(cap, 0)


SESSIONS = Admission(_cap_from_environment())


def admit_document(doc, admission: Admission = SESSIONS) -> bool:
    """Admit the session of a Bokeh document (True), releasing it when the session is destroyed;
    a document outside a server session (a script, a test) is always admitted."""
    context = getattr(doc, "session_context", None)
    if context is None:
        return True
    session_id = context.id
    if not admission.admit(session_id):
        return False
    doc.on_session_destroyed(lambda _context: admission.release(session_id))
    return True

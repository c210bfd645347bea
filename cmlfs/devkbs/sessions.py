"""dev-kbs RCAR sessions: created by /auth, attested by /attest, gone when they expire.

Like Trustee's session map: a random 32-hex id in the ``kbs-session-id``
cookie, a nonce, the TEE named at /auth, and after attestation the token. An
expired session is removed when read. The number of live sessions is bounded.
"""

import base64
import secrets
import threading
import time
from dataclasses import dataclass

MAX_SESSIONS = 10_000


@dataclass
class Session:
    id: str
    nonce: str
    tee: str
    expires: float  # time.time()
    token: str | None = None

    @property
    def attested(self) -> bool:
        return self.token is not None


class SessionStore:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, tee: str) -> Session | None:
        """A new session with a fresh 32-byte nonce; None when the store is full."""
        now = time.time()
        session = Session(
            id=secrets.token_hex(16),
            nonce=base64.b64encode(secrets.token_bytes(32)).decode("ascii"),
            tee=tee,
            expires=now + self.ttl,
        )
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
                if len(self._sessions) >= MAX_SESSIONS:
                    return None
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session with this id, or None (unknown or expired, then forgotten)."""
        if session_id is None:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is not None and session.expires <= time.time():
                del self._sessions[session_id]
                return None
            return session

    def expire_all(self) -> None:
        """End every session now (what a broker restart or timeout does to clients)."""
        with self._lock:
            self._sessions.clear()

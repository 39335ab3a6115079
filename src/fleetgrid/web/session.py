"""The dashboard's sign-in: a token (operator, owner or tenant) typed into the login form is checked once and
exchanged for a signed session cookie; the browser never keeps the token itself.

The cookie holds who signed in (role, name) and the sha256 of their token, signed with a key kept in the store
(so replicas on one database accept each other's sessions) and stamped with the time, via itsdangerous. Every
request checks the signature and the age, then that the token hash still belongs to that role and name: revoking a
tenant or changing the operator token ends their sessions at once. The cookie is HttpOnly, SameSite=Strict, and
Secure when the coordinator serves HTTPS; on plain http (127.0.0.1) it is sent without Secure, since a browser
would not send a Secure cookie back over http.

Forms that change something also carry a CSRF token, an HMAC of the session cookie under the same key: SameSite
Strict already keeps other sites' forms from sending the cookie, and the form token holds for browsers that do not
honour SameSite.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..coordinator.auth import OWNER_TOKEN_PREFIX, Authenticator, hash_token
from ..coordinator.store import Store
from ..errors import AuthError

__all__ = ["COOKIE", "SESSION_MAX_AGE_S", "Role", "Session", "Sessions"]

COOKIE = "fleetgrid_session"
SESSION_MAX_AGE_S = 12 * 3600
"""A session lasts a working day; then the login form asks for the token again."""
_KEY_SECRET = "dashboard_session_key"
"""The store's secrets row that holds the signing key (a random value, not a hash like the other rows)."""

Role = Literal["operator", "owner", "tenant"]


@dataclass(frozen=True, slots=True)
class Session:
    role: Role
    name: str
    """The owner's or tenant's name; 'operator' for the operator."""
    token_hash: str


class Sessions:
    def __init__(self, store: Store, auth: Authenticator) -> None:
        self.store, self.auth = store, auth
        key = store.get_secret(_KEY_SECRET)
        if key is None:
            store.set_secret(_KEY_SECRET, secrets.token_hex(32))
            key = store.get_secret(_KEY_SECRET)  # a replica starting at the same time may have written its own
        assert key is not None
        self._key = key.encode()
        self._signer = URLSafeTimedSerializer(key, salt="fleetgrid-dashboard-session")

    def login(self, token: str) -> tuple[Session, str]:
        """Check a token typed into the login form; returns the session and the cookie value. AuthError (its
        message says which tokens are accepted) when the token is no one's."""
        token = token.strip()
        header = f"Bearer {token}"
        accepted = ("the operator token, an owner token (fgown_...) or a tenant token (fgt_...), as "
                    "`fleetgrid credentials` or `fleetgrid owner add` printed them")
        if not token:
            raise AuthError(f"no token given; sign in with {accepted}")
        session: Session | None = None
        try:
            if token.startswith(OWNER_TOKEN_PREFIX + "_"):
                session = Session("owner", self.auth.owner(header), hash_token(token))
            else:
                try:
                    self.auth.operator(header)
                    session = Session("operator", "operator", hash_token(token))
                except AuthError:
                    session = Session("tenant", self.auth.tenant(header), hash_token(token))
        except AuthError:
            raise AuthError(f"that token is not valid here; sign in with {accepted}") from None
        return session, self._signer.dumps([session.role, session.name, session.token_hash])

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie holds, if its signature, age and credential all still hold; else None."""
        if not cookie:
            return None
        try:
            role, name, token_hash = self._signer.loads(cookie, max_age=SESSION_MAX_AGE_S)
        except (BadSignature, ValueError, TypeError):
            return None
        if role == "operator":
            expected = self.store.get_secret("operator")
            valid = expected is not None and hmac.compare_digest(token_hash, expected)
        elif role == "owner":
            valid = self.store.owner_by_token_hash(token_hash) == name
        elif role == "tenant":
            valid = self.store.tenant_by_token_hash(token_hash) == name
        else:
            valid = False
        return Session(role, name, token_hash) if valid else None

    def csrf_token(self, cookie: str) -> str:
        return hmac.new(self._key, b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, cookie: str, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(cookie), token or "")

"""Who may see the admin: credentials from `admin:`, sessions, CSRF tokens, the login rate limit.

The session cookie is signed (Flask's cookie session) and only names a session id; the session
itself lives in Redis, so logging out or changing the password ends it everywhere at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from flask import Flask, Request, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from itsdangerous import URLSafeTimedSerializer
from redis import Redis
from redis.exceptions import RedisError
from werkzeug.security import check_password_hash

from bridge.store import PREFIX, text
from mappings.config import AdminModel

URL_PREFIX = "/admin"
COOKIE_NAME = "salon_bridge_admin"
SIGNING_KEY = PREFIX + "admin:session-key"
SESSIONS = PREFIX + "admin:session:"
FAILURES = PREFIX + "admin:login-failures:"
TOKEN_USER = "token"


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def same(given: str, expected: str) -> bool:
    """Constant-time comparison of two strings of any lengths."""
    return hmac.compare_digest(_digest(given), _digest(expected))


def is_admin_path(path: str) -> bool:
    return path == URL_PREFIX or path.startswith(URL_PREFIX + "/")


class AdminAuth:
    def __init__(self, admin: AdminModel, redis: Redis):
        self.admin = admin
        self.redis = redis
        self._signing_key: bytes | None = admin.session_secret.encode() if admin.session_secret else None
        # Changing any credential changes this, which ends every session made with the old one.
        material = "\0".join([admin.username or "", admin.password_hash or "", admin.token or ""])
        self.fingerprint = hashlib.sha256(material.encode()).hexdigest()[:32]

    def signing_key(self) -> bytes:
        """`admin.session_secret`, else a random key made once and kept in Redis (shared by every
        web process and host, kept across restarts). Raises RedisError when Redis is down."""
        if self._signing_key is None:
            self.redis.set(SIGNING_KEY, secrets.token_hex(32), nx=True)
            stored = self.redis.get(SIGNING_KEY)
            if stored is None:  # deleted between the two calls: use the one made next time
                raise RedisError("the session key vanished; try again")
            self._signing_key = text(stored).encode()
        return self._signing_key

    # ---- credentials and the rate limit --------------------------------------------------------

    def check(self, username: str, password: str, token: str) -> str | None:
        """The user name the credentials log in as, or None."""
        admin = self.admin
        if token:
            return TOKEN_USER if admin.token is not None and same(token, admin.token) else None
        if admin.username is None or admin.password_hash is None:
            return None
        name_ok = same(username, admin.username)
        password_ok = check_password_hash(admin.password_hash, password)  # computed even for a wrong name
        return admin.username if name_ok and password_ok else None

    def _failure_keys(self, ip: str, username: str) -> list[str]:
        user = hashlib.sha256(username.casefold().encode()).hexdigest()[:32]
        return [f"{FAILURES}ip:{ip}", f"{FAILURES}user:{user}"]

    def locked_for(self, ip: str, username: str) -> int | None:
        """Seconds until this address or user name may try again, or None when it may now."""
        keys = self._failure_keys(ip, username)
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.ttl(key)
        answers = pipe.execute()
        waits = [
            max(int(ttl), 1)
            for count, ttl in zip(answers[0::2], answers[1::2], strict=True)
            if count is not None and int(count) >= self.admin.login_max_failures
        ]
        return max(waits) if waits else None

    def record_failure(self, ip: str, username: str) -> None:
        pipe = self.redis.pipeline(transaction=True)
        for key in self._failure_keys(ip, username):
            pipe.set(key, 0, ex=int(self.admin.login_window), nx=True)  # the window starts at the first failure
            pipe.incr(key)
        pipe.execute()

    def clear_failures(self, ip: str, username: str) -> None:
        self.redis.delete(*self._failure_keys(ip, username))

    # ---- sessions --------------------------------------------------------------------------------

    def _session_key(self, sid: str) -> str:
        return SESSIONS + hashlib.sha256(sid.encode()).hexdigest()

    def start_session(self, user: str) -> str:
        sid = secrets.token_urlsafe(32)
        self.redis.set(self._session_key(sid), f"{self.fingerprint} {user}", ex=int(self.admin.session_lifetime))
        return sid

    def session_user(self, sid: Any) -> str | None:
        """The user of a live session made with the current credentials, else None."""
        if not isinstance(sid, str) or not sid:
            return None
        value = self.redis.get(self._session_key(sid))
        if value is None:
            return None
        fingerprint, _, user = text(value).partition(" ")
        return user if hmac.compare_digest(fingerprint, self.fingerprint) else None

    def end_session(self, sid: Any) -> None:
        if isinstance(sid, str) and sid:
            self.redis.delete(self._session_key(sid))


class AdminSessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie session, only under /admin, with the key from AdminAuth."""

    def __init__(self, auth: AdminAuth):
        self.auth = auth

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        return URLSafeTimedSerializer(
            self.auth.signing_key(),
            salt=self.salt,
            serializer=self.serializer,
            signer_kwargs={"key_derivation": self.key_derivation, "digest_method": self.digest_method},
        )

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not is_admin_path(request.path):
            return self.session_class()  # the webhook never pays for a session
        try:
            return super().open_session(app, request)
        except RedisError:  # a null session, answered 503 by the admin's guard
            return None

    def get_cookie_name(self, app: Flask) -> str:
        return COOKIE_NAME

    def get_cookie_path(self, app: Flask) -> str:
        return URL_PREFIX

    def get_cookie_samesite(self, app: Flask) -> str:
        return "Lax"

    def get_cookie_httponly(self, app: Flask) -> bool:
        return True

    def get_cookie_secure(self, app: Flask) -> bool:
        if self.auth.admin.secure_cookie is not None:
            return self.auth.admin.secure_cookie
        return request.is_secure


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)

"""Client API keys: stored as sha256 digests in settings, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from gateway.kernel.errors import AuthenticationError, PermissionDeniedError
from gateway.settings import ApiKey


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "tg-" + secrets.token_urlsafe(32)


class KeyAuthenticator:
    """Maps ``Authorization: Bearer <key>`` to the key's id; no keys configured means open."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = [(k.id, bytes.fromhex(k.sha256)) for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authenticate(self, authorization: str | None) -> str | None:
        if not self._keys:
            return None
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthenticationError(
                "Missing API key: send 'Authorization: Bearer <key>'.")
        digest = hashlib.sha256(authorization[7:].strip().encode()).digest()
        found = None
        for key_id, expected in self._keys:  # no early exit: same time for every key
            if hmac.compare_digest(digest, expected):
                found = key_id
        if found is None:
            raise AuthenticationError("Incorrect API key provided.")
        return found


def authenticate_admin(keys: list[ApiKey], authorization: str | None) -> str:
    """The admin API's check (thresholds, records): off (403) without admin keys."""
    if not keys:
        raise PermissionDeniedError("The admin API is off: configure [[auth.admin_keys]].")
    caller = KeyAuthenticator(keys).authenticate(authorization)
    assert caller is not None
    return caller

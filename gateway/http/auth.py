"""Admin keys (``[[auth.admin_keys]]``), compared in constant time, and the key helpers of the
CLI. Client keys and their policies are :mod:`gateway.keys`."""

from __future__ import annotations

import hashlib
import hmac

from gateway.kernel.errors import AuthenticationError, PermissionDeniedError
from gateway.keys.store import digest, new_key
from gateway.settings import ApiKey

__all__ = ["authenticate_admin", "hash_key", "new_key"]


def hash_key(key: str) -> str:
    """The sha256 (hex) that settings and stores keep of a key."""
    return digest(key)


def authenticate_admin(keys: list[ApiKey], authorization: str | None) -> str:
    """The admin API's check: the admin key's id; off (403) without admin keys."""
    if not keys:
        raise PermissionDeniedError("The admin API is off: configure [[auth.admin_keys]].")
    if not authorization or not authorization.lower().startswith("bearer "):
        raise AuthenticationError("Missing API key: send 'Authorization: Bearer <key>'.")
    presented = hashlib.sha256(authorization[7:].strip().encode()).digest()
    found = None
    for key in keys:  # no early exit: same time for every key
        if hmac.compare_digest(presented, bytes.fromhex(key.sha256)):
            found = key.id
    if found is None:
        raise AuthenticationError("Incorrect API key provided.")
    return found

"""Keeping credentials out of everything tiergate says: error bodies, logs, /health, records.

:func:`redact` is the one function that does it. It masks, in any text:

- the password of a URL with credentials (``redis://:pw@host:6379/0`` becomes
  ``redis://:***@host:6379/0``; ``https://user:pw@host`` keeps ``user``) and a user name standing
  alone, which is often a token (``https://ghp_x@host`` becomes ``https://***@host``);
- credentials in a query string (``?api_key=``, ``token``, ``password``, ``secret``, ``sig`` ...);
- ``Bearer`` / ``Basic`` authorization values and API-key-shaped tokens (``sk-...``, ``tg-...``);
- every value registered with :func:`register` — the settings' API keys, signing key and the
  passwords of their URLs (:func:`register_settings` finds them in the settings; the gateway
  and its records delivery process call it at start).

It is used where foreign exceptions are mapped (``raise SomeTiergateError(redact(...)) from
exc``), where URLs are shown (``/health``, model tuples), and by :class:`RedactingFilter`, which
cleans whatever a log line still carries, tracebacks included.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from pydantic import BaseModel, SecretStr

MASK = "***"
_MIN_SECRET = 4
"""Shorter registered values are not masked literally (they would mask ordinary words)."""
_MIN_USER_TOKEN = 12
"""A URL's user name standing alone is registered as a token only from this length (a short
one is a name: ``http://user@host``)."""

_URL_CREDENTIALS = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#'\"<>]*)@")
_QUERY_CREDENTIALS = re.compile(
    r"(?i)(?P<name>[?&;][\w.\-]*(?:password|passwd|pwd|secret|token|api[_\-]?key|access[_\-]?key"
    r"|auth|signature|sig|key)=)[^&\s#'\"<>]*")
_AUTHORIZATION = re.compile(  # a token has a digit or a symbol: "basic information" is no key
    r"(?i)\b(?P<scheme>bearer|basic)\s+(?=[A-Za-z0-9._~+/=\-]*[0-9._~+/=\-])"
    r"[A-Za-z0-9._~+/=\-]{6,}")
_KEY_SHAPED = re.compile(r"\b(?P<prefix>sk|tg|rk)-(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{20,}")

_known: set[str] = set()
_known_pattern: re.Pattern[str] | None = None


def register(*values: str | None) -> None:
    """Mask these values wherever :func:`redact` finds them (also percent-encoded)."""
    global _known_pattern
    added = False
    for value in values:
        if value is None or len(value) < _MIN_SECRET:
            continue
        for form in {value, quote(value, safe="")}:
            if form not in _known:
                _known.add(form)
                added = True
    if added:
        ordered = sorted(_known, key=len, reverse=True)  # the longest first
        _known_pattern = re.compile("|".join(re.escape(v) for v in ordered))


def register_url(url: str | None) -> None:
    """Register the password (and a user name standing alone) of ``url``."""
    if not url:
        return
    try:
        parts = urlsplit(url)
        password, username = parts.password, parts.username
    except ValueError:
        return
    if password:
        register(unquote(password), password)
    elif username and len(username) >= _MIN_USER_TOKEN:
        register(unquote(username), username)


def register_settings(value: Any) -> None:
    """Register every credential in ``value`` (settings, or any section of them): secret fields,
    and the password of every URL, wherever they are in it."""
    if isinstance(value, SecretStr):
        register(value.get_secret_value())
    elif isinstance(value, str):
        if "://" in value:
            register_url(value)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            register_settings(getattr(value, name))
    elif isinstance(value, dict):
        for item in value.values():
            register_settings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            register_settings(item)


def _userinfo(match: re.Match[str]) -> str:
    userinfo = match["userinfo"]
    if not userinfo:
        return match[0]
    user, colon, _ = userinfo.partition(":")
    if colon:
        return f"{match['scheme']}{user}:{MASK}@"
    return f"{match['scheme']}{MASK}@"


def redact(text: str) -> str:
    """``text`` with every credential it holds masked (see the module docs)."""
    if not text:
        return text
    text = _URL_CREDENTIALS.sub(_userinfo, text)
    text = _QUERY_CREDENTIALS.sub(lambda m: m["name"] + MASK, text)
    text = _AUTHORIZATION.sub(lambda m: f"{m['scheme']} {MASK}", text)
    text = _KEY_SHAPED.sub(lambda m: f"{m['prefix']}-{MASK}", text)
    if _known_pattern is not None:
        text = _known_pattern.sub(MASK, text)
    return text


def redact_error(exc: BaseException) -> str:
    """A foreign exception's message, redacted (its type when it has none)."""
    return redact(str(exc)) or type(exc).__name__


class RedactingFilter(logging.Filter):
    """A handler filter that redacts every record's message and traceback before it is
    written (:func:`install`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging reports it itself
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FILTER = RedactingFilter()
_LOGGERS = ("", "uvicorn", "uvicorn.error", "uvicorn.access")


def install(loggers: Iterable[str] = _LOGGERS) -> None:
    """Put :class:`RedactingFilter` on every handler of ``loggers`` (the root's by default):
    a record reaches a handler only through it. Call it once logging is configured."""
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)

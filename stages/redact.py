"""Secrets never leave the process: URL credentials are replaced by *** wherever text goes out.

Every place where a URL or a message that may quote one leaves vidpipe (error lines, log
lines, JSONL and Redis records, the summary, the rich display) passes it through `redact`.

What counts as a secret in a URL (`scheme://userinfo@host/path?query`):
- the user-info's password (`user:PASSWORD@`), or the whole user-info when it has no `:`
  (`rtsp://TOKEN@host`), since cameras put tokens there;
- the value of every query parameter whose name suggests one (`password`, `ssl_password`,
  `pwd`, `token`, `secret`, `key`, `auth`, `sig`...).

The user-info is taken to end at the *last* `@` of the URL, not at the first `/`, `?` or `#`
as RFC 3986 says: a password with an unencoded `#` or `/` (`rtsp://admin:pa#ss@cam/live`)
is then still hidden whole. The price is that a path holding an `@` hides a little too much.
"""

from __future__ import annotations

import re

MASK = "***"

# A URL inside free text: a scheme, "://", then everything up to whitespace. Quotes and
# brackets are kept in: a password may hold them, and a closing quote hides nothing.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
_SECRET_PARAM = re.compile(
    r"([?&;](?:[^=&;#\s]*?)(?:pass|pwd|secret|token|key|auth|sig|credential)[^=&;#\s]*=)([^&;#\s'\"]*)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """`url` with its user-info password and secret query values replaced by ***.

    `rtsp://admin:pw@cam/live` -> `rtsp://admin:***@cam/live`, `rtsp://tok@cam` ->
    `rtsp://***@cam`, `redis://h/0?password=pw` -> `redis://h/0?password=***`. Never raises,
    whatever the string: a malformed URL is redacted as text.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return _SECRET_PARAM.sub(rf"\g<1>{MASK}", url)
    userinfo, at, host_and_rest = rest.rpartition("@")
    if at:
        user, colon, _password = userinfo.partition(":")
        shown = f"{user}:{MASK}" if colon and "/" not in user else MASK
        rest = f"{shown}@{host_and_rest}"
    return f"{scheme}://" + _SECRET_PARAM.sub(rf"\g<1>{MASK}", rest)


def redact(text: str) -> str:
    """`text` with every URL in it passed through `redact_url` (for messages that quote URLs)."""
    if "://" not in text:
        return text
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def has_secret(url: str) -> bool:
    """Whether `redact_url` would hide anything in `url`."""
    return redact_url(url) != url


def printable(text: str) -> str:
    """`text` with control characters (NUL, tab, newline, escape...) written as Python escapes
    (\\x00, \\t, \\n): a line quoting a hostile URL or name stays one readable line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)

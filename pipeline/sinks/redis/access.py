"""Redis access checked at start: a refused login or command is a user error (exit 2, one line).

ACL DRYRUN would need admin rights, so vidpipe runs each command it will need once at start, in
a form that changes nothing: a user without one of them (or without the keys) gets NOPERM then,
not after frames were processed. `access_denied` is the one line for any refusal, naming the
user, what was refused and the ACL rule that allows it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

import redis
from redis.exceptions import NoPermissionError

from stages.redact import redact_url

# What the sink runs (pipeline/sinks/redis/sink.py) and what `subscribe` runs, for the messages.
WRITER_NEEDS = "XADD, XRANGE, XREVRANGE, XINFO, MULTI, EXEC, EVALSHA, SCRIPT and HSET/HGET/HDEL in scripts"
READER_NEEDS = "XGROUP, XREADGROUP, XAUTOCLAIM, XACK, XREAD, XINFO, EVALSHA and SCRIPT"
# An ID above every entry: reads and claims from it find nothing.
_MAX_ID = "18446744073709551615-18446744073709551615"
_PROBE_SCRIPT = "redis.call('XINFO', 'GROUPS', KEYS[1]) return 1"


def access_denied(url: str, err: Exception, keys: str, needs: str) -> str:
    """One line for a refused login (wrong password) or command (NOPERM): who, what, the fix.
    `keys` is the ACL key patterns the user needs ("~vidpipe:results:*")."""
    try:
        user = unquote(urlsplit(url).username or "") or "default"
    except ValueError:
        user = "default"
    reason = str(err).rstrip(".").split("caused error: ")[-1]  # a pipeline's prefix names the args
    command = re.search(r"run the '([^']+)' command", reason)
    if isinstance(err, redis.AuthenticationError):
        fix = "give the right user and password in the URL: redis://USER:PASSWORD@host:port/db"
    elif command:
        fix = f"allow it (ACL SETUSER {user} +{command.group(1)}) or use a user that may run {needs}"
    else:
        fix = f"allow the keys (ACL SETUSER {user} {keys}) or use a user that may run {needs} on them"
    return f"redis {redact_url(url)}: access denied for user {user} ({reason}); {fix}"


def check_writer_access(client: redis.Redis, keys: list[str]) -> None:
    """Each command the sink's writer sends, once per stream, changing nothing (NoPermissionError).

    XADD with ID 0-0 passes the ACL check and is then refused by every stream; the reads find
    at most one entry. (The claim at start has run EVALSHA and the hash commands already.)
    """
    pipe = client.pipeline(transaction=True)  # MULTI/EXEC too
    for key in keys:
        pipe.xadd(key, {"probe": "1"}, id="0-0")
        pipe.xrange(key, count=1)
        pipe.xrevrange(key, count=1)
        pipe.xinfo_stream(key)
    _raise_refusal(pipe.execute(raise_on_error=False))


def check_reader_access(client: redis.Redis, keys: list[str], group: str, consumer: str) -> None:
    """Each command `subscribe` sends, once per stream, changing nothing (NoPermissionError)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.xreadgroup(group, consumer, {key: "0"}, count=1)  # own pending entries: read again later
        pipe.xautoclaim(key, group, consumer, 0, start_id=_MAX_ID, count=1)
        pipe.xack(key, group, "0-1")
        pipe.xread({key: _MAX_ID}, count=1)
    _raise_refusal(pipe.execute(raise_on_error=False))
    probe = client.register_script(_PROBE_SCRIPT)
    for key in keys:
        probe(keys=[key])


def _raise_refusal(replies: list) -> None:
    for reply in replies:
        if isinstance(reply, NoPermissionError):
            raise reply

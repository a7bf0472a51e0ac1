"""One run writes a source's stream at a time: claims on streams, held in a Redis hash.

A run claims each stream it writes as a field of the hash `<key_prefix>` (the stream's key ->
the holder's JSON `{"run", "pid", "host", "expires"}`). The writer renews its claims every
CLAIM_RENEW_S; a claim expires CLAIM_TTL_MS after its holder stops renewing it (by Redis's
clock). A claim held by a process of this host that is gone (or by a sink of this process
that is closed) is taken over at once.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import redis

CLAIM_TTL_MS = 15_000
CLAIM_RENEW_S = 2.0

# Claim a stream for a run: HSET the hash KEYS[1] field ARGV[1] unless another run holds
# it and its claim has not expired (by Redis's clock). Returns nil, or the holder's claim.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and ARGV[4] ~= '1' then
  local held = cjson.decode(current)
  if held['run'] ~= ARGV[2] and tonumber(held['expires']) > now then return current end
end
local claim = cjson.decode(ARGV[3])
claim['expires'] = now + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(claim))
return false
"""
_RELEASE = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and cjson.decode(current)['run'] == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""

LIVE_RUNS: set[str] = set()  # run ids of this process's open sinks


class Conflict(Exception):
    """Another live run holds the claim on a stream."""


class StreamClaims:
    """The claims of one run (`run_id`) on streams under `key_prefix`.

    `claim` and `renew` raise Conflict when another live run holds a stream, and redis-py's
    errors (RedisError, OSError) when Redis cannot be asked. `url` (redacted) names Redis in
    messages.
    """

    def __init__(self, client: redis.Redis, key_prefix: str, run_id: str, url: str) -> None:
        self._key_prefix = key_prefix
        self._run_id = run_id
        self._url = url
        self._claim_script = client.register_script(_CLAIM)
        self._release_script = client.register_script(_RELEASE)
        self._holder = json.dumps({"run": run_id, "pid": os.getpid(), "host": socket.gethostname()})
        self.held: set[str] = set()

    def claim(self, key: str) -> None:
        """Claim (or renew) stream key for this run; Conflict if another live run holds it."""
        args = [key, self._run_id, self._holder, "0", CLAIM_TTL_MS]
        held = self._claim_script(keys=[self._key_prefix], args=args)
        if held is not None:
            other = json.loads(held)
            if other.get("host") == socket.gethostname() and not _alive(other.get("pid"), other.get("run")):
                self._claim_script(keys=[self._key_prefix], args=[*args[:3], "1", CLAIM_TTL_MS])
            else:
                self.held.discard(key)
                raise Conflict(
                    f"redis {self._url}: stream {key} is being written by run {other.get('run')} "
                    f"(pid {other.get('pid')} on {other.get('host')}); two runs must not publish "
                    "the same source name: give one of them another --name, or wait for the other "
                    f"to end (a crashed run's claim expires within {CLAIM_TTL_MS // 1000} s)"
                )
        self.held.add(key)

    def renew(self) -> None:
        """Renew every claim held (Conflict if one was taken meanwhile)."""
        for key in sorted(self.held):
            self.claim(key)

    def release(self) -> None:
        """Give up every claim held; if Redis cannot be reached, they expire by themselves."""
        for key in sorted(self.held):
            try:
                self._release_script(keys=[self._key_prefix], args=[key, self._run_id])
            except (redis.RedisError, OSError):
                return  # it expires by itself
        self.held.clear()


def _alive(pid: Any, run: Any) -> bool:
    """Whether the run holding a claim on this host still runs (its process, or its sink here)."""
    if pid == os.getpid():
        return run in LIVE_RUNS
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True

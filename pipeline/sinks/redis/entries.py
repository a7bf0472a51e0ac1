"""vidpipe's Redis Stream entry IDs, and the Redis connection every Redis user of vidpipe opens.

Entry IDs are `<base>-<position>`, with `position = (seq + 1) * SLOTS_PER_SEQ` for frame `seq`
and the positions right after it for the events and summary that follow it (the sink,
pipeline/sinks/redis/sink.py, explains how `base` is chosen). The sink writes them; the
subscriber and the cluster read them back with `entry_seq` and `missing_seqs`.
"""

from __future__ import annotations

import os

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from engines.errors import OutputError
from pipeline.config import check_redis_url
from stages.redact import has_secret, redact, redact_url

SLOTS_PER_SEQ = 1000


def resolve_redis_url(cli_value: str | None) -> str | None:
    """The --redis value, else the REDIS_URL environment variable (redis-py's convention)."""
    return cli_value or os.environ.get("REDIS_URL") or None


def connect(url: str, decode: bool = False, timeout_s: float = 5.0) -> redis.Redis:
    """A client for url that fails fast (no hidden retries): callers own the retry policy.
    OutputError (a user error, one line, no secret) if the URL is not one redis-py can use."""
    try:
        check_redis_url(url)
    except ValueError as err:  # its reasons never quote a secret
        raise OutputError(f"redis URL {redact_url(url)!r} is not valid: it {redact(str(err))}") from None
    try:
        return redis.Redis.from_url(
            url,
            decode_responses=decode,
            socket_connect_timeout=2.0,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError as err:
        # redis-py's message can quote a piece of a password it misparsed (an unencoded #).
        reason = "" if has_secret(url) else f" ({redact(str(err))})"
        raise OutputError(
            f"redis URL {redact_url(url)!r} is not valid{reason}; percent-encode special characters; "
            "use redis://[:password@]host:port/db, rediss:// for TLS or unix:///path"
        ) from None


def missing_seqs(previous_id: str | None, entry_id: str, from_seq: int = 0) -> tuple[int, int] | None:
    """The frame seqs that lie between two entries of a vidpipe stream, if any.

    previous_id is the entry delivered just before (None or "0-0" when there was none);
    a different base means a different run, or a part of one re-sent under a new base,
    whose frames start at from_seq (the entry's `from_seq` field; 0 when it has none).
    """
    base, _, pos = entry_id.partition("-")
    position = int(pos)
    if position == 0:
        return None  # not written by vidpipe
    first = from_seq
    if previous_id and previous_id != "0-0":
        prev_base, _, prev_pos = previous_id.partition("-")
        if prev_base == base:
            first = int(prev_pos) // SLOTS_PER_SEQ
    last = -(-position // SLOTS_PER_SEQ) - 2
    return (first, last) if last >= first else None


def entry_seq(entry_id: str) -> int | None:
    """The seq of the frame a vidpipe entry ID stands for; None for events and the summary."""
    position = int(entry_id.partition("-")[2])
    if position == 0 or position % SLOTS_PER_SEQ:
        return None
    return position // SLOTS_PER_SEQ - 1

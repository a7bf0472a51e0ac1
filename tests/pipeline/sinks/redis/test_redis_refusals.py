"""User errors about Redis are one line and exit 2 at start, in `vidpipe run` and `vidpipe
subscribe`: a user the ACL does not allow a needed command, and a URL with a query parameter
redis-py would not take (from --redis, a config file or REDIS_URL), its password redacted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.cli_run import vidpipe
from tests.redis_server import stream

SECRET = "S3cretPW"


def one_line(proc, prefix: str) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), proc.stderr
    return lines[0]


@pytest.fixture
def acl_server(make_redis_server):
    server = make_redis_server()
    with server.client() as client:
        for user, rules in {"noxadd": ["+@all", "-xadd"], "noeval": ["+@all", "-eval", "-evalsha"],
                            "nokeys": ["+@all"]}.items():  # fmt: skip
            keys = ["other:*"] if user == "nokeys" else ["*"]
            client.acl_setuser(user, enabled=True, passwords=[f"+{SECRET}"], keys=keys, commands=rules)
    return server


def url_of(server, user: str) -> str:
    return f"redis://{user}:{SECRET}@127.0.0.1:{server.port}/0"


@pytest.mark.parametrize(("user", "refused"), [("noxadd", "'xadd' command"), ("noeval", "'evalsha' command"),
                                               ("nokeys", "access one of the keys")])  # fmt: skip
def test_run_as_a_user_without_a_needed_command_exits_2_before_any_frame(acl_server, car_clip, tmp_path, user, refused):
    out = tmp_path / "r.jsonl"
    proc = vidpipe("run", "--quiet", str(car_clip), "--name", "cam", "--out", str(out),
                   "--redis", url_of(acl_server, user), cwd=tmp_path)
    line = one_line(proc, "vidpipe: error: ")
    assert f"access denied for user {user}" in line and refused in line
    assert f"ACL SETUSER {user} " in line and SECRET not in line
    assert not out.exists()  # no frame was processed, and the --out file it made is removed
    assert stream(acl_server, "cam") == []


@pytest.mark.parametrize(("user", "refused"), [("noeval", "'evalsha' command"), ("nokeys", "access one of the keys")])
def test_subscribe_as_a_user_without_a_needed_command_exits_2(acl_server, user, refused):
    proc = vidpipe("subscribe", "--redis", url_of(acl_server, user), "--source", "cam", timeout=60)
    line = one_line(proc, "vidpipe subscribe: ")
    assert f"access denied for user {user}" in line and refused in line
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr


def bad_url(port: int) -> str:
    return f"redis://:{SECRET}@127.0.0.1:{port}/0?x=y"


@pytest.mark.parametrize("via", ["--redis", "config", "REDIS_URL"])
def test_run_with_an_unknown_url_parameter_is_one_line(redis_server, car_clip, tmp_path: Path, via):
    url, env, args = bad_url(redis_server.port), dict(os.environ), []
    if via == "--redis":
        args = ["--redis", url]
    elif via == "config":
        config = tmp_path / "c.yaml"
        config.write_text(json.dumps({"outputs": {"redis": {"url": url, "spool_dir": str(tmp_path / "spool")}}}))
        args = ["--config", str(config)]
    else:
        env["REDIS_URL"] = url
        args = ["--redis"]
    proc = vidpipe("run", "--quiet", str(car_clip), "--max-frames", "3", *args, env=env, cwd=tmp_path)
    line = one_line(proc, "vidpipe: error: ")
    assert "unknown query parameter 'x'; accepted: db, username, password, client_name" in line
    assert SECRET not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("via", ["--redis", "REDIS_URL"])
def test_subscribe_with_an_unknown_url_parameter_is_one_line(redis_server, via):
    url = bad_url(redis_server.port)
    args = ["--redis", url] if via == "--redis" else []
    env = {**os.environ, **({"REDIS_URL": url} if via == "REDIS_URL" else {})}
    proc = vidpipe("subscribe", *args, "--source", "cam", env=env, timeout=60)
    line = one_line(proc, "vidpipe subscribe: ")
    assert "unknown query parameter 'x'; accepted: db, username, password, client_name" in line
    assert SECRET not in proc.stderr and "redis://:***@127.0.0.1" in line

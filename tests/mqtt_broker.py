"""A private Mosquitto broker for tests (own port and directory), stopped and restarted at will,
and a subscriber with a persistent session that collects what arrives."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.redis_server import free_port


class Mosquitto:
    """mosquitto on 127.0.0.1 with persistence: `stop()` (SIGTERM) saves sessions and queued
    messages, so a subscriber's QoS 1 messages survive the restart."""

    def __init__(self, directory: Path, password: tuple[str, str] | None = None) -> None:
        if shutil.which("mosquitto") is None:
            pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
        self.directory = directory
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        self.conf = directory / "mosquitto.conf"
        access = "allow_anonymous true\n"
        if password is not None:  # only this user, with this password
            users = directory / "passwords"
            subprocess.run(["mosquitto_passwd", "-b", "-c", str(users), *password], check=True, capture_output=True)
            # As root mosquitto reads the file after becoming `mosquitto`, who cannot enter pytest's 0700 dirs.
            access = f"allow_anonymous false\npassword_file {users}\n" + ("user root\n" if os.geteuid() == 0 else "")
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n{access}persistence true\n"
            f"persistence_location {directory}/\nmax_queued_messages 0\n"
        )
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.directory / "mosquitto.log", "ab")
        self._process = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)
            self._process.wait(10)
            self._process = None


class Collector:
    """Subscribes to `vidpipe/#` at QoS 1 with a persistent session; keeps every message."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="vidpipe-test-collector",
                                   clean_session=False)  # fmt: skip
        self._client.on_connect = lambda c, *_: c.subscribe("vidpipe/#", qos=1)
        self._client.on_message = self._message
        self._client.reconnect_delay_set(0.1, 0.5)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _message(self, _client, _userdata, message) -> None:
        with self._lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def events(self) -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith("/events")]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

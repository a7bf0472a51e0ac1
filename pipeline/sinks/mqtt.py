"""Events and counts to an MQTT broker, with paho-mqtt (Eclipse Paho, the reference Python client).

Topics (`<prefix>` is `vidpipe` unless configured):

    <prefix>/<source>/events      every source event (track_start/end, zone_enter/exit,
                                  line_cross, outages, source_end) as JSON, QoS 1
    <prefix>/<source>/counts      zone occupancy and line totals, retained, on change
    <prefix>/<source>/detections  each frame's record, QoS 0 (only with `detections: true`)
    <prefix>/availability         "online" / "offline", retained; "offline" is the last will

A broker outage never blocks the pipeline: QoS 1 messages wait in paho's own outgoing
table, which we bound with `max_queued_messages_set(spool)`; paho resends them when it
has reconnected (it reconnects by itself, `reconnect_delay_set`). A publish refused
because that table is full is counted as dropped, and so is anything still unsent when
the end of the run has waited `drain_timeout_s` (a SIGINT or SIGTERM during that wait ends it
at once, `give_up`); the summary reports both (`outputs.mqtt`). Counts and detections are
state, not history: QoS 0, and the latest counts are published again, retained, on every
(re)connect. QoS 1 is at least once: a message the broker got but whose PUBACK was lost is
sent again (with DUP set).

Home Assistant MQTT discovery (`home_assistant: true`): one sensor per line direction and
per zone, reading the retained counts topic, announced under `<discovery_prefix>/sensor/`.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from engines.errors import ConfigError, OutputError
from pipeline.config import MqttConfig
from pipeline.sinks.records import event_to_record, result_to_record
from pipeline.summary import RunSummary
from stages.redact import redact_url
from stages.types import Result, SourceEvent

log = logging.getLogger("vidpipe.mqtt")

TOPIC_LEVEL = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
MAX_SPOOL = 60_000  # paho's message ids are 16 bits: it cannot hold more in flight
# CONNACK reasons that mean the login itself is wrong (MQTT 3.1.1 return codes 4 and 5, as
# paho names them): at start they are a user error.
LOGIN_REFUSALS = {"Bad user name or password", "Not authorized"}
LOGIN_WAIT_S = 5.0


def _check_topic_level(what: str, value: str) -> None:
    if not TOPIC_LEVEL.match(value):
        raise ConfigError(f"{what} {value!r} cannot be an MQTT topic level; use letters, digits, '.', '-', '_'")


class MqttSink:
    """Publishes to one broker; never blocks the publisher on the network."""

    def __init__(self, config: MqttConfig, sources: list[str], run_id: str) -> None:
        parts = urlsplit(config.url)  # checked with the config (pipeline/config/sections.check_mqtt_url)
        for prefix_level in config.topic_prefix.split("/"):
            _check_topic_level("outputs.mqtt.topic_prefix", prefix_level)
        for name in sources:
            _check_topic_level("source name", name)
        self._config = config
        self._url = redact_url(config.url)
        self._prefix = config.topic_prefix
        self._availability = f"{self._prefix}/availability"
        self._counts: dict[str, str] = {}  # source -> last counts payload
        self._announced: set[str] = set()
        self._lock = threading.Lock()
        self._pending: set[int] = set()  # mids of events not yet acknowledged (publisher thread)
        self._acked: set[int] = set()  # mids acknowledged by the broker (network thread)
        self._stale: set[int] = set()  # acks of other messages (counts, availability), dropped next round
        self.published = 0
        self.dropped = 0
        self._given_up = False  # a plain flag: set from a signal handler, which must take no lock
        self._answered = threading.Event()  # the broker's first CONNACK came
        self._refused: str | None = None  # why it refused the connection, if it did
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"vidpipe-{run_id}")
        if parts.username:  # percent-encoded in the URL (a # in a password is %23)
            client.username_pw_set(unquote(parts.username), None if parts.password is None else unquote(parts.password))
        if parts.scheme == "mqtts":
            client.tls_set()
        client.will_set(self._availability, "offline", qos=1, retain=True)
        client.max_queued_messages_set(min(config.spool, MAX_SPOOL))
        client.reconnect_delay_set(0.1, 2.0)
        client.on_connect = self._connected
        client.on_disconnect = self._disconnected
        client.on_publish = self._acknowledged
        port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        try:
            client.connect(parts.hostname, port, keepalive=30)
        except (OSError, ValueError) as err:
            raise OutputError(f"mqtt: cannot connect to {self._url} ({err}); start the broker or fix --mqtt") from None
        self._client = client
        client.loop_start()
        # A refused login is the user's to fix, as with Redis: exit 2 now, not a run that drops
        # every event. A broker that is slow to answer is not waited for past LOGIN_WAIT_S.
        if self._answered.wait(LOGIN_WAIT_S) and self._refused is not None:
            client.loop_stop()
            client.disconnect()
            raise OutputError(f"mqtt: {self._url} refused the login ({self._refused}); give the right user and "
                              "password in the URL (mqtt://USER:PASSWORD@host, percent-encoded) or allow this client")

    # --- paho's network thread ---

    def _connected(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            if not self._answered.is_set() and str(reason) in LOGIN_REFUSALS:
                self._refused = str(reason)  # the start raises it as one line: nothing to log
            else:
                log.warning("mqtt: %s refused the connection: %s", self._url, reason)
            self._answered.set()
            return
        self._answered.set()
        client.publish(self._availability, "online", qos=1, retain=True)
        with self._lock:
            counts = dict(self._counts)
            self._announced.clear()
        for source, payload in counts.items():
            self._publish_counts(source, payload)

    def _acknowledged(self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        with self._lock:
            self._acked.add(mid)

    def _reconcile(self) -> None:
        with self._lock:
            done = self._pending & self._acked
            self._acked -= done | self._stale
            self._stale = self._acked - self._pending
        self._pending -= done
        self.published += len(done)

    def _disconnected(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if self._refused is None:
            log.warning("mqtt: lost %s (%s); events wait in the spool", self._url, reason)

    # --- the Sink protocol (publisher thread) ---

    def write_result(self, result: Result) -> None:
        if self._config.detections:
            self._client.publish(f"{self._prefix}/{result.source}/detections", _json(result_to_record(result)), qos=0)
        if result.analytics is None:
            return
        payload = _json(result.analytics)
        with self._lock:
            if self._counts.get(result.source) == payload:
                return
            self._counts[result.source] = payload
        self._publish_counts(result.source, payload)

    def write_event(self, event: SourceEvent) -> None:
        info = self._client.publish(f"{self._prefix}/{event.source}/events", _json(event_to_record(event)), qos=1)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("mqtt: the spool of %d events is full; dropping (counted)", self._config.spool)
            return
        self._pending.add(info.mid)
        self._reconcile()

    def write_summary(self, summary: RunSummary) -> None:
        deadline = time.monotonic() + self._config.drain_timeout_s
        self._reconcile()
        while self._pending and time.monotonic() < deadline and not self._given_up:
            time.sleep(0.02)
            self._reconcile()
        undelivered = len(self._pending)
        self._pending.clear()
        self.dropped += undelivered
        report: dict[str, Any] = {"url": self._url, "events_published": self.published, "events_dropped": self.dropped}
        if self.dropped:
            why = "a signal ended the wait for the broker" if self._given_up and undelivered else (
                "spool full or broker unreachable at the end")
            report["error"] = f"{self.dropped} events not delivered ({why})"
            log.warning("mqtt: %s", report["error"])
        summary.outputs["mqtt"] = report
        self.close()

    def give_up(self) -> None:
        """Stop waiting for the broker (a signal at the end of the run): what is unsent counts as dropped."""
        self._given_up = True

    def close(self) -> None:
        if self._client is None:
            return
        client, self._client = self._client, None
        client.publish(self._availability, "offline", qos=1, retain=True)
        client.disconnect()
        client.loop_stop()

    # --- counts and Home Assistant discovery ---

    def _publish_counts(self, source: str, payload: str) -> None:
        client = self._client
        if client is None:
            return
        if self._config.home_assistant and source not in self._announced:
            self._announced.add(source)
            self._announce(client, source, json.loads(payload))
        client.publish(f"{self._prefix}/{source}/counts", payload, qos=0, retain=True)

    def _announce(self, client: mqtt.Client, source: str, counts: dict) -> None:
        """Home Assistant discovery: a sensor per line direction and per zone."""
        sensors = [(f"{line}_{d}", f"{line} {d}", f"{{{{ value_json.lines['{line}']['{d}'] }}}}")
                   for line in counts.get("lines", {}) for d in ("in", "out")]  # fmt: skip
        sensors += [(zone, f"{zone} occupancy", f"{{{{ value_json.zones['{zone}'].values() | sum }}}}")
                    for zone in counts.get("zones", {})]  # fmt: skip
        for key, name, template in sensors:
            uid = f"vidpipe_{self._prefix.replace('/', '_')}_{source}_{key}"
            config = {
                "name": f"{source} {name}", "unique_id": uid, "state_topic": f"{self._prefix}/{source}/counts",
                "value_template": template, "availability_topic": self._availability, "state_class": "measurement",
                "device": {"identifiers": [f"vidpipe_{source}"], "name": f"vidpipe {source}"},
            }  # fmt: skip
            client.publish(f"{self._config.discovery_prefix}/sensor/{uid}/config", _json(config), qos=1, retain=True)


def _json(record: Any) -> str:
    return json.dumps(record, separators=(",", ":"))

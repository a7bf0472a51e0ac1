"""The wire format of source events: `fatal` is a typed field of SourceEvent, and a record
carries it exactly where it always has."""

from __future__ import annotations

import json

from pipeline.sinks.records import event_to_record
from stages.types import EndReason, EventType, SourceEvent


def test_a_fatal_event_record_says_fatal_right_after_its_error() -> None:
    event = SourceEvent("cam", EventType.DECODE_ERROR, 41, 1.5, {"error": "truncated", "packets": 42}, fatal=True)
    line = json.dumps(event_to_record(event), separators=(",", ":"))
    assert line == (
        '{"type":"decode_error","source":"cam","after_seq":41,"wall_time":1.5,'
        '"error":"truncated","fatal":true,"packets":42}'
    )


def test_a_non_fatal_event_record_has_no_fatal_field() -> None:
    event = SourceEvent("cam", EventType.SOURCE_END, 9, 2.0, {"frames": 10, "reason": EndReason.MAX_FRAMES})
    record = event_to_record(event)
    assert "fatal" not in record
    assert json.dumps(record, separators=(",", ":")) == (
        '{"type":"source_end","source":"cam","after_seq":9,"wall_time":2.0,"frames":10,"reason":"max_frames"}'
    )

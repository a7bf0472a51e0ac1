"""JSON records of results, source events and summaries: the wire format of every sink."""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.summary import RunSummary
from stages.redact import redact
from stages.types import Detections, Reason, Result, SourceEvent, Status


def result_to_record(result: Result) -> dict[str, Any]:
    d = result.detections
    return {
        "type": "frame",
        "source": result.source,
        "seq": result.seq,
        "pts": result.time_s,  # seconds; the wire keeps the name subscribers read (README, outputs)
        "status": result.status.value,
        "reason": result.reason.value if result.reason else None,
        "error": result.error and redact(result.error),
        "attempts": result.attempts,
        "detections": [
            {
                "xyxy": [round(float(v), 2) for v in d.xyxy[i]],
                "score": round(float(d.score[i]), 4),
                "class_id": int(d.class_id[i]),
                "label": d.labels[i],
                **({"track_id": int(d.track_id[i])} if d.track_id is not None else {}),
            }
            for i in range(len(d))
        ],
        "timings": {k: round(v, 3) for k, v in result.timings.items()},
        "latency_ms": round(result.latency_ms, 3),
        "wall_time": result.wall_time,
        **({"analytics": result.analytics} if result.analytics is not None else {}),
    }


def record_to_result(record: dict[str, Any]) -> Result:
    dets = record.get("detections") or []
    detections = (
        Detections(
            xyxy=np.array([x["xyxy"] for x in dets], np.float32).reshape(-1, 4),
            score=np.array([x["score"] for x in dets], np.float32),
            class_id=np.array([x["class_id"] for x in dets], np.int32),
            labels=tuple(x["label"] for x in dets),
            track_id=np.array([x["track_id"] for x in dets], np.int64) if "track_id" in dets[0] else None,
        )
        if dets
        else Detections.empty()
    )
    return Result(
        source=record["source"],
        seq=int(record["seq"]),
        time_s=record.get("pts"),
        status=Status(record["status"]),
        reason=Reason(record["reason"]) if record.get("reason") else None,
        error=record.get("error"),
        attempts=int(record.get("attempts", 0)),
        detections=detections,
        timings=dict(record.get("timings") or {}),
        latency_ms=float(record.get("latency_ms", 0.0)),
        wall_time=float(record.get("wall_time", 0.0)),
        analytics=record.get("analytics"),
    )


def event_to_record(event: SourceEvent) -> dict[str, Any]:
    return {
        "type": event.type,
        "source": event.source,
        "after_seq": event.after_seq,
        "wall_time": event.wall_time,
        **_event_details(event),
    }


def _event_details(event: SourceEvent) -> dict[str, Any]:
    """The event's details, strings redacted; a fatal event's `"fatal": true` right after its
    `error` (where records have always carried it), a non-fatal event's record has none."""
    fields: dict[str, Any] = {}
    for key, value in event.details.items():
        fields[key] = redact(value) if isinstance(value, str) else value
        if key == "error" and event.fatal:
            fields["fatal"] = True
    if event.fatal:
        fields.setdefault("fatal", True)
    return fields


def summary_to_record(summary: RunSummary) -> dict[str, Any]:
    return {
        "type": "summary",
        "frames": summary.frames,
        "ok": summary.ok,
        "failed": summary.failed,
        "balanced": summary.balanced,
        "elapsed_s": round(summary.elapsed_s, 3),
        "fps": round(summary.fps, 2),
        "latency_p50_ms": summary.latency_p50_ms,
        "latency_p99_ms": summary.latency_p99_ms,
        "sources": {
            name: {"decoded": s.decoded, "ok": s.ok, "failed": s.failed, "balanced": s.balanced}
            for name, s in summary.sources.items()
        },
        "inference": summary.inference.as_dict() if summary.inference is not None else {},
        "sizing": summary.sizing,
        "outputs": summary.outputs,
        "events": summary.events,
        "error": summary.error and redact(summary.error),
        "interrupted": summary.interrupted,
        **({"analytics": summary.analytics} if summary.analytics else {}),
    }

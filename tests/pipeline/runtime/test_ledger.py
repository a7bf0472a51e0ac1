"""The per-source ledger (pipeline/runtime/ledger.py): frames in, results out, from many threads."""

from __future__ import annotations

import threading

from pipeline.runtime.ledger import Ledger
from stages.types import Detections, Reason, Result, Status


def result(source: str, seq: int, reason: Reason | None) -> Result:
    status = Status.OK if reason is None else Status.FAILED
    error = None if reason is None else "x"
    return Result(source, seq, None, status, reason, error, 1, Detections.empty(), {}, 0.0, 0.0)


def test_every_frame_is_counted_once_per_outcome_across_threads() -> None:
    ledger = Ledger(["a", "b"])
    reasons = [None, Reason.DEADLINE, None, Reason.SHED, None]

    def feed(source: str) -> None:
        for seq in range(1000):
            ledger.decoded(source)
            ledger.result(result(source, seq, reasons[seq % len(reasons)]))

    threads = [threading.Thread(target=feed, args=(s,)) for s in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    books = ledger.snapshot()
    for source in ("a", "b"):
        book = books[source]
        assert (book.decoded, book.ok, book.failed) == (1000, 600, {"deadline": 200, "shed": 200})
        assert book.balanced


def test_a_snapshot_is_a_copy() -> None:
    ledger = Ledger(["a"])
    ledger.decoded("a")
    before = ledger.snapshot()
    ledger.result(result("a", 0, Reason.INFERENCE))
    assert before["a"].failed == {} and ledger.snapshot()["a"].failed == {"inference": 1}

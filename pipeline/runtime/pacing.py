"""Pacing a file at its frame rate (`realtime`): each frame's place in the video and when it is due."""

from __future__ import annotations

import time


class PacingClock:
    """Where each frame sits in the video (seconds from the first frame) and when it is due.

    A stream without timestamps (raw .h264) advances one nominal frame interval per
    frame. A timestamp that jumps (forward by more than JUMP_S or any step back, as at
    the seam of concatenated TS files) restarts the clock one interval after the
    previous frame, and is reported, so the source is neither paused for hours nor let
    run unpaced.
    """

    JUMP_S = 2.0

    def __init__(self, fps: float | None) -> None:
        self.interval = 1 / fps if fps else 1 / 25
        self.started = time.monotonic()
        self.video_s = 0.0  # the current frame's position in the video
        self._offset: float | None = None  # time_s - video_s
        self._last_s: float | None = None
        self._frames = 0

    def position(self, time_s: float | None) -> tuple[float, dict | None]:
        """The frame's position in seconds, from its presentation time `time_s` (seconds; None
        when the stream has none), and the jump's details when that time jumped."""
        jump = None
        if self._frames == 0:
            self._offset = time_s
        elif time_s is None or self._last_s is None:
            self.video_s += self.interval
            self._offset = None if time_s is None else time_s - self.video_s
        else:
            step = time_s - self._last_s
            if step > self.JUMP_S or step < 0:
                jump = {"from_s": round(self._last_s, 6), "to_s": round(time_s, 6), "jump_s": round(step, 6)}
                self._offset = time_s - (self.video_s + self.interval)
            self.video_s = time_s - self._offset
        self._frames += 1
        self._last_s = time_s
        return self.video_s, jump

    def wait_s(self) -> float:
        """How long until the current frame is due (0 when late)."""
        return max(0.0, self.started + self.video_s - time.monotonic())

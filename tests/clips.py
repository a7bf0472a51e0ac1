"""Small test clips made with PyAV: odd sizes, variable frame rate, truncated files."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_clip(
    path: Path,
    frames: int = 30,
    size: tuple[int, int] = (320, 240),
    fps: int = 25,
    pts_steps: list[int] | None = None,
    codec: str = "libx264",
    pix_fmt: str | None = None,
) -> Path:
    """Encode `frames` frames of a moving gradient; `pts_steps` (in 1/fps/100 units) makes VFR."""
    width, height = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        # 4:2:0 needs even sizes; odd sizes (641x359) are encoded as 4:4:4.
        stream.pix_fmt = pix_fmt or ("yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p")
        # The muxer rewrites stream.time_base when it writes the header (mp4: 1/10000 or so),
        # so frames keep their own copy; the encoder gets it too, or VFR steps round to 1/fps.
        time_base = Fraction(1, fps * 100)
        stream.time_base = stream.codec_context.time_base = time_base
        pts = 0
        for i in range(frames):
            x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
            y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
            channels = [(x + 7 * i) % 256 + 0 * y, (y + 3 * i) % 256 + 0 * x, np.full((height, width), (5 * i) % 256)]
            image = np.stack(channels, axis=-1)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="rgb24")
            frame.pts = pts
            frame.time_base = time_base
            pts += pts_steps[i % len(pts_steps)] if pts_steps else 100
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def count_frames(path: Path) -> int:
    """Frames PyAV decodes from the file (the independent count tests compare against)."""
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def truncate(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = Path(src).read_bytes()
    Path(dst).write_bytes(data[: int(len(data) * fraction)])
    return dst


def frame_times(path: Path) -> list[float | None]:
    """Each decoded frame's presentation time in seconds, as PyAV reports it."""
    with av.open(str(path)) as container:
        return [frame.time for frame in container.decode(video=0)]


def video_packets(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of each video packet with data, in file order."""
    with av.open(str(path)) as container:
        return [(packet.pos, packet.size) for packet in container.demux(video=0) if packet.size]


def corrupt_middle(src: Path, dst: Path, packets: int = 3) -> Path:
    """Flip the first bytes of `packets` video packets in the middle of the file.

    The bytes flipped are each packet's NAL length prefix, so the decoder rejects exactly
    those packets while the container (and every other packet) stays readable.
    """
    data = bytearray(Path(src).read_bytes())
    video = video_packets(src)
    middle = len(video) // 2
    for offset, _ in video[middle : middle + packets]:
        for i in range(offset, offset + 8):
            data[i] ^= 0xFF
    Path(dst).write_bytes(bytes(data))
    return dst


def remux(src: Path, dst: Path, ts_offset: float = 0.0, format: str | None = None) -> Path:
    """Copy the video packets into another container (by `dst`'s suffix or `format`), as
    `ffmpeg -i src -c copy [-output_ts_offset S] dst` does."""
    options = {"output_ts_offset": str(ts_offset)} if ts_offset else {}
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=format, options=options) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(video=0):
            if packet.dts is None:
                continue  # the demuxer's empty end-of-stream packet
            packet.stream = stream
            out.mux(packet)
    return dst


def overwrite_packet(src: Path, dst: Path, index: int, seed: int = 0) -> Path:
    """Overwrite video packet `index` (file order) with random bytes of its own size."""
    data = bytearray(Path(src).read_bytes())
    offset, size = video_packets(src)[index]
    data[offset : offset + size] = np.random.default_rng(seed).bytes(size)
    Path(dst).write_bytes(bytes(data))
    return dst


RED_BLOCK = (40, 60, 140, 120)  # x1, y1, x2, y2 in coded pixels


def block_clip(path: Path, rotate: int, frames: int = 3, size: tuple[int, int] = (640, 360)) -> Path:
    """A black clip with a red block at RED_BLOCK, tagged like `-metadata:s:v:0 rotate=R`.

    The `rotate` tag is degrees clockwise to display; FFmpeg stores it as a display matrix
    of -R degrees (counterclockwise), which is what this writes.
    """
    width, height = size
    x1, y1, x2, y2 = RED_BLOCK
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.set_display_rotation(-rotate)
        image = np.zeros((height, width, 3), np.uint8)
        image[y1:y2, x1:x2] = (255, 0, 0)
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def red_box(image: np.ndarray) -> tuple[int, int, int, int]:
    """The bounding box (x1, y1, x2, y2) of the red pixels of an RGB image."""
    ys, xs = np.where((image[..., 0] > 128) & (image[..., 1] < 100) & (image[..., 2] < 100))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def loop_clip(src: Path, dst: Path, times: int) -> Path:
    """`src`'s video packets `times` times over in one file (remuxed, no re-encode): a long
    input made in tmp_path, never a copy of media in the repo."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        video = source.streams.video[0]
        stream = out.add_stream_from_template(video)
        packets = [p for p in source.demux(video) if p.size]
        first = min(p.dts for p in packets)
        step = packets[1].pts - packets[0].pts if len(packets) > 1 else 1
        span = max(p.pts for p in packets) - min(p.pts for p in packets) + step
        span = max(span, max(p.dts for p in packets) - first + 1)
        for lap in range(times):
            for packet in packets:
                packet.stream = stream
                packet.pts += span if lap else 0
                packet.dts += span if lap else 0
                out.mux(packet)
    return dst

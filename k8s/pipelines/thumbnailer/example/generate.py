"""Sample data for the thumbnailer: real videos rendered by ffmpeg from its synthetic (lavfi) sources, in several
codecs, containers, sizes and lengths, plus a few broken files that only look like videos.

    python examples/thumbnailer/generate.py OUTDIR [--count N] [--corrupt K]

Names are deterministic (`video-000-h264-640x360.mp4`, `corrupt-000.mp4`), so re-running overwrites in place.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import imageio_ffmpeg


@dataclass(frozen=True)
class Codec:
    encoder: str  # ffmpeg encoder name
    short: str  # what the file name calls it
    ext: str  # container
    options: tuple[str, ...]  # fast settings on purpose: the point is variety of formats, not quality


CODECS: dict[str, Codec] = {
    "h264": Codec("libx264", "h264", "mp4", ("-preset", "ultrafast", "-pix_fmt", "yuv420p")),
    "h264-444": Codec("libx264", "h264", "mkv", ("-preset", "ultrafast", "-pix_fmt", "yuv444p")),  # odd sizes ok
    "mpeg4": Codec("mpeg4", "mpeg4", "avi", ("-q:v", "5", "-pix_fmt", "yuv420p")),
    "vp9": Codec("libvpx-vp9", "vp9", "webm", ("-deadline", "realtime", "-cpu-used", "8", "-b:v", "400k")),
    "vp8": Codec("libvpx", "vp8", "webm", ("-deadline", "realtime", "-cpu-used", "8", "-b:v", "500k")),
    "mjpeg": Codec("mjpeg", "mjpeg", "mov", ("-q:v", "8", "-pix_fmt", "yuvj444p")),
}
FALLBACK = "mpeg4"  # ffmpeg's native MPEG-4 encoder is in every build and takes odd sizes


@dataclass(frozen=True)
class Spec:
    codec: str  # a CODECS key
    width: int
    height: int
    seconds: float
    source: str  # a lavfi graph with {w}, {h}, {s} (seconds) and {r} (rate) placeholders
    rate: int = 25


# Every source moves, so frames differ and the `thumbnail` filter has a real choice to make.
MOVING_BOX = "smptebars=size={w}x{h}:rate={r}:duration={s}[bg];color=c=red:size=64x64:rate={r}[box];" \
             "[bg][box]overlay=x='mod(t*150,W-w)':y='H/3':shortest=1"
SPECS: list[Spec] = [
    Spec("h264", 640, 360, 4, "testsrc2=size={w}x{h}:rate={r}:duration={s}"),
    Spec("mpeg4", 320, 240, 3, "mandelbrot=size={w}x{h}:rate={r},trim=duration={s}"),
    Spec("vp9", 480, 270, 2, MOVING_BOX),
    # life is noise-like and mjpeg stores it badly: render small and upscale blocky to keep the file a few MB
    Spec("mjpeg", 1280, 720, 2, "life=size=320x180:rate={r}:seed=42:mold=10:life_color=#00ff00:death_color=#aa0000,"
                                "scale={w}:{h}:flags=neighbor,trim=duration={s}", rate=10),
    Spec("h264-444", 317, 179, 6, "testsrc2=size=640x360:rate={r}:duration={s},scale={w}:{h},setsar=1"),
    Spec("vp8", 640, 360, 0.4, "testsrc2=size={w}x{h}:rate={r}:duration={s}"),  # too short to seek into
    Spec("mpeg4", 1280, 720, 1, "mandelbrot=size=640x360:rate={r},scale={w}:{h},trim=duration={s}"),
    Spec("h264", 854, 480, 5, MOVING_BOX),
]


def ffmpeg_exe() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


@cache
def available_encoders() -> frozenset[str]:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-encoders"], capture_output=True, text=True, check=True)
    return frozenset(line.split()[1] for line in out.stdout.splitlines() if line.startswith(" V"))


def video_name(index: int, spec: Spec) -> str:
    codec = CODECS[spec.codec]
    return f"video-{index:03d}-{codec.short}-{spec.width}x{spec.height}.{codec.ext}"


def plan(count: int) -> list[tuple[str, Spec]]:
    """File name and spec of each video, without rendering anything (tests parametrize on it)."""
    out = []
    for i in range(count):
        spec = SPECS[i % len(SPECS)]
        if CODECS[spec.codec].encoder not in available_encoders():  # another ffmpeg build: degrade, keep going
            spec = replace(spec, codec=FALLBACK)
        out.append((video_name(i, spec), spec))
    return out


def render(path: Path, spec: Spec, cycle: int) -> None:
    graph = spec.source.format(w=spec.width, h=spec.height, s=spec.seconds, r=spec.rate)
    if cycle:  # a second lap through SPECS: shift the hue so the videos are not byte-identical copies
        graph += f",hue=h={cycle * 47 % 360}"
    codec = CODECS[spec.codec]
    argv = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-filter_complex", graph,
            "-an", "-c:v", codec.encoder, *codec.options, "-threads", "1",
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-map_metadata", "-1", str(path)]
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


def corrupt_file(outdir: Path, index: int) -> Path:
    """Broken in the ways real uploads are: cut off after the header, garbage, or empty."""
    rng = random.Random(index)  # seeded: the same bytes every run
    kind = index % 3
    if kind == 0:  # an mp4 that stops inside mdat: no moov atom, so nothing is decodable
        path = outdir / f"corrupt-{index:03d}.mp4"
        ftyp = struct.pack(">I4s4sI8s", 24, b"ftyp", b"isom", 512, b"isomavc1")
        mdat = struct.pack(">I4s", 1_000_000, b"mdat") + rng.randbytes(2048)
        path.write_bytes(ftyp + mdat)
    elif kind == 1:  # random bytes with a video's name
        path = outdir / f"corrupt-{index:03d}.mp4"
        path.write_bytes(rng.randbytes(64 * 1024))
    else:  # a failed upload: the name, no content
        path = outdir / f"corrupt-{index:03d}.avi"
        path.write_bytes(b"")
    return path


def generate(outdir: Path, count: int = 6, corrupt: int = 1) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    jobs = [(outdir / name, spec, i // len(SPECS)) for i, (name, spec) in enumerate(plan(count))]
    # ffmpeg runs single-threaded per file; one file per core is the fastest split for many small encodes
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(lambda job: render(*job), jobs))
    return [path for path, _, _ in jobs] + [corrupt_file(outdir, k) for k in range(corrupt)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--count", type=int, default=6, help="real videos to render (default 6)")
    parser.add_argument("--corrupt", type=int, default=1, help="broken files to add (default 1)")
    args = parser.parse_args(argv)
    if args.count < 0 or args.corrupt < 0:
        parser.error("--count and --corrupt must be >= 0")
    started = time.monotonic()
    try:
        paths = generate(args.outdir, args.count, args.corrupt)
    except subprocess.CalledProcessError as exc:
        print(f"generate: ffmpeg failed: {exc.stderr.decode(errors='replace').strip()[-500:]}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in paths) / 1e6
    print(f"generated {args.count} videos + {args.corrupt} corrupt in {args.outdir} "
          f"({size:.1f} MB, {time.monotonic() - started:.1f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

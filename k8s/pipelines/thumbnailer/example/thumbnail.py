"""The thumbnailer worker (the book's ch. 10 example), a command following the batchmesh worker contract.

Reads the item from $WORK_ITEM_FILE, writes `thumbnail.png` into $WORK_OUTPUT_DIR and prints the result JSON on
stdout. The frame is a representative one: ffmpeg's `thumbnail` filter picks it from a window starting a third of
the way in (openings are often black or titles); clips too short to seek into use their first frame.

Environment: THUMB_WIDTH (default 320), THUMB_TIMEOUT_S per ffmpeg call (default 60).
Exit codes: 0 done; 1 the video could not be thumbnailed (ffmpeg's reason on stderr); 2 bad item or settings.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import imageio_ffmpeg

MIN_SEEK_S = 1.0  # shorter clips: take the first frame, a third of the way in is barely past it
WINDOW_S = 4.0  # how much video the thumbnail filter compares
WINDOW_FRAMES = 100  # the filter's batch size; at EOF of the window it picks from what it has
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ffmpeg's stderr lines that are context, not the reason: stream info is indented, the rest is bookkeeping
NOISE = re.compile(r"^(\s|Input #|Output #|Stream mapping|Press \[q\]|frame=|At least one output file|"
                   r"Error opening input file |.*misdetection possible|\[Parsed_)")


class Failed(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def env_number(name: str, default: float, low: float, high: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw.strip() else default
    except ValueError:
        raise Failed(f"{name}={raw!r} is not a number", 2) from None
    if not low <= value <= high:
        raise Failed(f"{name}={raw!r} is outside [{low:g}, {high:g}]", 2)
    return value


def source_path(item: dict[str, Any]) -> Path:
    """The video's local path from the item's file:// URI (at data.uri, or uri). Other schemes are refused:
    this worker reads files, it does not fetch from wherever an item points."""
    data = item.get("data") if isinstance(item.get("data"), dict) else {}
    uri = data.get("uri") or item.get("uri")
    if not isinstance(uri, str) or not uri:
        raise Failed("item has no uri (expected data.uri or uri)", 2)
    parts = urlparse(uri)
    if parts.scheme != "file":
        raise Failed(f"unsupported uri scheme {parts.scheme or '(none)'!r}: only file:// is accepted", 2)
    if parts.netloc not in ("", "localhost"):
        raise Failed(f"file uri names a remote host {parts.netloc!r}", 2)
    return Path(url2pathname(parts.path))  # it also undoes the %-escapes


def ffmpeg(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    argv = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin", "-nostats", *args]
    try:
        return subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed(f"ffmpeg timed out after {timeout:g}s") from None


def reason(stderr: str) -> str:
    """The last few lines that say what went wrong, without ffmpeg's `[in#0 @ 0x…]` prefixes and without the
    summary lines that repeat an earlier line's cause."""
    lines: list[str] = []
    for raw in stderr.splitlines():
        if NOISE.match(raw):
            continue
        line = re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*", "", raw).strip()
        cause = line.rsplit(": ", 1)[-1]
        if line and not any(seen.endswith(cause) for seen in lines):
            lines.append(line)
    return "; ".join(lines[-3:]) or "ffmpeg failed without saying why"


def probe(path: Path, timeout: float) -> float | None:
    """Duration in seconds (None when the container does not say). There is no ffprobe in imageio-ffmpeg:
    `ffmpeg -i` with no output prints the input's header and exits 1, so success is judged by what it printed."""
    err = ffmpeg(["-i", str(path)], timeout).stderr
    if not re.search(r"^\s*Stream #\S+.*: Video:", err, re.MULTILINE):
        raise Failed(reason(err) if "Input #" not in err else "no video stream")
    found = re.search(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)", err)
    return int(found[1]) * 3600 + int(found[2]) * 60 + float(found[3]) if found else None


def extract(path: Path, out: Path, width: int, start: float | None, timeout: float) -> float:
    """Write the chosen frame to `out` as an RGB PNG; return its time in seconds. start=None: first frame."""
    # height from the display aspect ratio (honours non-square pixels), rounded to even; `,` escaped for the graph
    scale = f"scale=w={width}:h=max(2\\,2*trunc({width}/dar/2+0.5)),setsar=1"
    seek = [] if start is None else ["-ss", f"{start:.3f}", "-t", f"{WINDOW_S:g}"]
    vf = scale if start is None else f"thumbnail=n={WINDOW_FRAMES},{scale}"
    done = ffmpeg([*seek, "-i", str(path), "-map", "0:v:0", "-vf", vf, "-frames:v", "1", "-pix_fmt", "rgb24",
                   "-c:v", "png", "-f", "image2", "-update", "1", "-y", str(out)], timeout)
    if done.returncode != 0 or not out.exists() or out.stat().st_size == 0:
        raise Failed(reason(done.stderr))
    # the filter logs its pick, relative to the seek point: "frame id #13 (pts_time=0.520000) selected"
    picked = re.search(r"pts_time=([\d.]+)\) selected", done.stderr)
    return (start or 0.0) + (float(picked[1]) if picked else 0.0)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, the first after the signature: check what was written, not what
    ffmpeg was asked for."""
    head = path.read_bytes()[:24]
    if len(head) < 24 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise Failed(f"{path.name} is not a PNG")
    width, height = struct.unpack(">II", head[16:24])
    return width, height


FINAL, PARTIAL = "thumbnail.png", ".thumbnail.partial.png"


def render(path: Path, out_dir: Path, width: int, timeout: float) -> tuple[float | None, float]:
    """Thumbnail `path` into out_dir/PARTIAL; return (duration, time of the chosen frame)."""
    duration = probe(path, timeout)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / PARTIAL
    for stale in (partial, out_dir / FINAL):  # an earlier attempt's picture must not pass for this one's
        stale.unlink(missing_ok=True)
    if duration is not None and duration < MIN_SEEK_S:
        return duration, extract(path, partial, width, None, timeout)
    try:
        return duration, extract(path, partial, width, (duration or 0.0) / 3, timeout)
    except Failed:  # a wrong duration can seek past the end; the first frame is still a thumbnail
        return duration, extract(path, partial, width, None, timeout)


def thumbnail(item: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    width_f = env_number("THUMB_WIDTH", 320.0, 16, 7680)
    if not width_f.is_integer():
        raise Failed(f"THUMB_WIDTH={width_f:g} is not a whole number of pixels", 2)
    width = int(width_f)
    timeout = env_number("THUMB_TIMEOUT_S", 60.0, 1, 86400)
    path = source_path(item)
    name = str(item.get("name") or item.get("id") or path.name)
    if not path.is_file():
        raise Failed(f"{path}: no such file")
    try:
        duration, at = render(path, out_dir, width, timeout)
    except Failed as exc:
        raise Failed(f"{name}: {exc}", exc.code) from None
    partial = out_dir / PARTIAL
    got_w, got_h = png_size(partial)
    if got_w != width or got_h % 2:
        raise Failed(f"ffmpeg wrote {got_w}x{got_h}, expected width {width} and an even height")
    final = out_dir / FINAL
    os.replace(partial, final)  # atomic: a retry or a reader never sees half a PNG
    return {"thumbnail": str(final.resolve()), "width": got_w, "height": got_h, "source": name,
            "duration_s": round(duration, 3) if duration is not None else None, "frame_at_s": round(at, 3)}


def main() -> int:
    try:
        item_file, out_dir = os.environ.get("WORK_ITEM_FILE"), os.environ.get("WORK_OUTPUT_DIR")
        if not item_file or not out_dir:
            raise Failed("WORK_ITEM_FILE and WORK_OUTPUT_DIR must be set", 2)
        try:
            item = json.loads(Path(item_file).read_text())
        except (OSError, ValueError) as exc:
            raise Failed(f"cannot read the item from {item_file}: {exc}", 2) from None
        if not isinstance(item, dict):
            raise Failed("the item is not a JSON object", 2)
        result = thumbnail(item, Path(out_dir))
    except Failed as exc:
        print(f"thumbnail: {exc}", file=sys.stderr)
        return exc.code
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

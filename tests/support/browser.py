"""Headless Chromium for tests: find it, dump a page's DOM, take a screenshot.

Network safety: the browser may only talk to 127.0.0.1. URLs elsewhere are
refused before Chromium starts, its resolver maps every other host to
NOTFOUND, and the flags below switch off its background traffic (updates,
sync, pings, metrics upload). Each call runs in a throwaway profile and a new
process group that is killed whole on timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import tempfile
import zlib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

# Debian's /usr/bin/chromium wrapper exports Google API keys and loads extensions:
# the binary it wraps is preferred
CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser", "google-chrome",
              "google-chrome-stable", "chrome", "headless_shell")

FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
    "--disable-sync", "--no-first-run", "--no-pings", "--disable-domain-reliability",
    "--metrics-recording-only", "--disable-breakpad", "--disable-extensions",
    "--no-default-browser-check", "--no-proxy-server", "--hide-scrollbars",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
)


class BrowserError(RuntimeError):
    """Chromium failed, timed out, or was asked to load a non-loopback URL."""


def find_chromium() -> str | None:
    """The Chromium binary: $GRADMESH_CHROMIUM, else the first candidate found."""
    override = os.environ.get("GRADMESH_CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    for name in CANDIDATES:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    return None


def _require_loopback(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname != "127.0.0.1":
        raise BrowserError(f"refusing to load {url!r}: only http://127.0.0.1 is allowed")


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    binary = find_chromium()
    if binary is None:
        raise BrowserError("no chromium binary found")
    with tempfile.TemporaryDirectory(prefix="gradmesh-chromium-") as profile:
        cmd = [binary, *FLAGS, f"--user-data-dir={profile}", *args]
        # own process group: Chromium forks renderers and helpers that must die with it
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise BrowserError(f"chromium timed out after {timeout} s: {args}") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if proc.returncode != 0:
        raise BrowserError(f"chromium exited {proc.returncode}: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def dump_dom(url: str, timeout: float = 60.0) -> str:
    """The serialized DOM of `url` after it loaded (blocking: from async code, run it
    in a thread so the server under test keeps answering)."""
    _require_loopback(url)
    return _run(["--dump-dom", url], timeout).stdout


def screenshot(url: str, path: Path | str, timeout: float = 60.0,
               window_size: tuple[int, int] = (1280, 1800)) -> Path:
    """A PNG of `url` at `window_size`, written to `path` (blocking, as `dump_dom`)."""
    _require_loopback(url)
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    _run([f"--screenshot={path}", f"--window-size={window_size[0]},{window_size[1]}", url],
         timeout)
    if not path.is_file():
        raise BrowserError(f"chromium wrote no screenshot at {path}")
    return path


class _PointCounter(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}
        self._chart: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "svg" and attr.get("data-chart") is not None:
            self._chart = attr["data-chart"]
            self.counts.setdefault(self._chart or "", 0)
        elif self._chart is not None and "point" in (attr.get("class") or "").split():
            self.counts[self._chart] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._chart = None


def count_points(html: str) -> dict[str, int]:
    """Data points (`class="point"` elements) per chart (`<svg data-chart=...>`)."""
    parser = _PointCounter()
    parser.feed(html)
    parser.close()
    return parser.counts


def _chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG")
    out, pos = [], 8
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        out.append((data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def _unfilter(kind: int, line: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
    """One scanline's bytes (PNG filter types 0-4); Sub and Up are vectorized, Average
    and Paeth depend on the byte to their left and run byte by byte."""
    if kind == 0:
        return line
    if kind == 1:
        return (np.cumsum(line.reshape(-1, bpp), axis=0, dtype=np.uint64) % 256).astype(
            np.uint8).reshape(-1)
    if kind == 2:
        return (line + prev).astype(np.uint8)
    cur, up = bytearray(line.tobytes()), prev.tobytes()
    for i in range(len(cur)):
        a = cur[i - bpp] if i >= bpp else 0
        if kind == 3:
            cur[i] = (cur[i] + ((a + up[i]) >> 1)) & 0xFF
            continue
        b, c = up[i], up[i - bpp] if i >= bpp else 0
        pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
        cur[i] = (cur[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    return np.frombuffer(bytes(cur), dtype=np.uint8)


def png_pixels(path: Path | str) -> np.ndarray:
    """(height, width, 3) RGB array of an 8-bit RGB/RGBA PNG, decoded with zlib only."""
    chunks = _chunks(Path(path).read_bytes())
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if depth != 8 or color not in (2, 6) or interlace:
        raise ValueError(f"unsupported PNG: depth {depth} color type {color}")
    bpp = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(b"".join(b for t, b in chunks if t == b"IDAT")),
                        dtype=np.uint8).reshape(height, 1 + width * bpp)
    rows, prev = [], np.zeros(width * bpp, dtype=np.uint8)
    for scanline in raw:
        prev = _unfilter(int(scanline[0]), scanline[1:], prev, bpp)
        rows.append(prev)
    return np.stack(rows).reshape(height, width, bpp)[:, :, :3]


def distinct_colors(pixels: np.ndarray) -> int:
    flat = pixels.reshape(-1, 3).astype(np.uint32)
    return len(np.unique((flat[:, 0] << 16) | (flat[:, 1] << 8) | flat[:, 2]))


def has_color(pixels: np.ndarray, hex_color: str) -> bool:
    """Whether any pixel is exactly `#rrggbb`."""
    rgb = [int(hex_color.lstrip("#")[i:i + 2], 16) for i in (0, 2, 4)]
    return bool(np.all(pixels == np.array(rgb, dtype=np.uint8), axis=-1).any())

"""Hypothesis throws JSON and images at a real server: never a 5xx, every refusal in the `{"error"}`
shape, and the process's memory stays bounded (sampled every few milliseconds while it runs)."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import threading
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

MEMORY_HEADROOM = 300 * 1024 * 1024  # the conftest server allows 2 MB bodies and 200x200 images


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """The highest resident set size of this process (which runs the server) while in the block."""

    def __enter__(self) -> PeakMemory:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def png_declaring(width: int, height: int, bit_depth: int, color_type: int, pixels: bytes) -> bytes:
    """A PNG whose header declares any size, with whatever (usually far too little) pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(pixels)) + chunk(b"IEND", b"")


def _real_png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


sides = st.one_of(st.integers(1, 300), st.sampled_from([60_000, 1_000_000, 20_000_000, 2**31 - 1]))
declared_pngs = st.builds(
    png_declaring, sides, sides, st.sampled_from([1, 8, 16]), st.sampled_from([0, 2, 3, 4, 6]),
    st.binary(max_size=64),
)
mutated_pngs = st.builds(
    lambda data, at, byte: data[:at % len(data)] + bytes([byte]) + data[at % len(data) + 1:],
    st.builds(_real_png, st.integers(1, 90), st.integers(1, 90)), st.integers(0, 10**6), st.integers(0, 255),
)
# real, decodable slivers: inside the pixel limit, so only the side and aspect limits stand between
# them and a shortest-side resize to 64 x 2,500,000
slivers = st.builds(lambda long, flip: _real_png(*((1, long) if flip else (long, 1))),
                    st.sampled_from([20_000, 39_000]), st.booleans())
images = st.one_of(declared_pngs, mutated_pngs, slivers, st.binary(max_size=512))

numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**80), 10**80),
    st.text("0123456789", min_size=1, max_size=6000).map(int),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=30,
)
deep = st.builds(lambda depth, opener: opener * depth, st.integers(1, 200_000), st.sampled_from(["[", "{\"a\":"]))


def _json_text(value) -> str:
    return json.dumps(value, allow_nan=True)


json_bodies = st.one_of(
    json_values.map(lambda v: _json_text({"tensor": v})),
    json_values.map(_json_text),
    images.map(lambda data: _json_text({"image": base64.b64encode(data).decode()})),
    deep.map(lambda text: '{"tensor": ' + text),
    deep,
    st.text(max_size=200),
)

requests = st.one_of(
    json_bodies.map(lambda text: {"content": text.encode("utf-8", "surrogatepass"),
                                  "headers": {"content-type": "application/json"}}),
    images.map(lambda data: {"content": data, "headers": {"content-type": "image/png"}}),
    images.map(lambda data: {"files": {"file": ("x.png", data, "image/png")}}),
)


@pytest.mark.slow
def test_fuzzed_json_and_images_never_get_5xx_and_memory_stays_bounded(client):
    import sys

    sys.set_int_max_str_digits(0)  # let hypothesis build the huge integers a hostile client would send
    seen: dict[int, int] = {}

    @settings(max_examples=250, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(request=requests)
    def check(request) -> None:
        response = client.post("/predict", **request)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, response.text[:300]
        if response.status_code >= 400:
            assert list(response.json()) == ["error"], response.text[:300]

    try:
        with PeakMemory() as memory:
            check()
    finally:
        sys.set_int_max_str_digits(4300)
    assert memory.peak - memory.start < MEMORY_HEADROOM, f"peak grew by {(memory.peak - memory.start) >> 20} MB"
    assert {400, 413, 422} <= set(seen), seen  # the fuzz reached each kind of refusal

"""The studio answers only loopback Host names, needs the page's session token for every POST, refuses
hostile images from their header, and refuses a bad patch name at save, before any work."""

from __future__ import annotations

import io
import re
import time

import httpx
import pytest
from PIL import Image

EDIT = {"latent": 0, "op": "scale", "value": 0}


def _token(url: str) -> str:
    page = httpx.get(url, timeout=60)
    assert page.status_code == 200 and page.headers["cache-control"] == "no-store"
    match = re.search(r'<meta name="steerpatch-token" content="([^"]+)">', page.text)
    assert match, "the page does not carry the session token"
    return match.group(1)


@pytest.fixture(scope="module")
def token(studio_url) -> str:
    return _token(studio_url)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8765", "127.0.0.1.evil.example", "10.0.0.5:80", ""])
def test_a_foreign_host_is_refused(studio_url, host):
    # DNS rebinding: the browser connects to 127.0.0.1 but says the attacker's name in Host
    for response in (httpx.get(studio_url + "api/info", headers={"host": host}, timeout=60),
                     httpx.get(studio_url, headers={"host": host}, timeout=60)):
        assert response.status_code == 403, response.text
        assert "not this machine's loopback name" in response.json()["error"]


@pytest.mark.parametrize("host", ["127.0.0.1:1234", "localhost", "LOCALHOST:80", "[::1]:8765"])
def test_loopback_hosts_are_answered(studio_url, host):
    assert httpx.get(studio_url + "api/info", headers={"host": host}, timeout=60).status_code == 200


def test_allow_host_adds_a_name(studio_bench):
    from steerpatch.studio import serve_in_thread

    running = serve_in_thread(studio_bench, allow_hosts=("studio.lan",))
    try:
        assert httpx.get(running.url + "api/info", headers={"host": "studio.lan:9"}, timeout=60).status_code == 200
        assert httpx.get(running.url + "api/info", headers={"host": "other.lan"}, timeout=60).status_code == 403
        steer = httpx.post(running.url + "api/steer", json={"key": "d0", "edits": []}, timeout=60,
                           headers={"x-steerpatch-token": running.token})
        assert steer.status_code == 200  # the token serve_in_thread reports is the one its app checks
    finally:
        running.stop()


def test_posts_need_the_session_token(studio_url, token, studio_bench):
    body = {"key": "d0", "edits": []}
    for headers in ({}, {"x-steerpatch-token": "guess"}, {"x-steerpatch-token": token[:-1]}):
        for path in ("api/steer", "api/patches", "api/patches/x/validate", "api/patches/x/register", "api/upload"):
            response = httpx.post(studio_url + path, json=body, headers=headers, timeout=60)
            assert response.status_code == 403, (path, response.text)
            assert "session token" in response.json()["error"]
    ok = httpx.post(studio_url + "api/steer", json=body, headers={"x-steerpatch-token": token}, timeout=60)
    assert ok.status_code == 200 and ok.json()["changed"] is False
    assert not list(studio_bench.patch_dir.glob("x.json"))


def test_each_studio_gets_its_own_token(studio_url, token, studio_bench):
    from steerpatch.studio import create_app

    assert create_app(studio_bench).state.token != create_app(studio_bench).state.token
    assert len(token) >= 40 and _token(studio_url) == token  # stable for the session, random across sessions


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("size", "words"),
    [((1, 1_000_000), "side limit"), ((20_000_000, 1), "side limit"), ((1, 60_000), "side limit"),
     ((1, 5_000), "aspect ratio"), ((5000, 5000), "pixel limit")],
)
def test_hostile_uploads_are_refused_from_the_header(studio_url, token, size, words):
    started = time.perf_counter()
    response = httpx.post(studio_url + "api/upload", files={"file": ("x.png", _png(Image.new("1", size)), "image/png")},
                          headers={"x-steerpatch-token": token}, timeout=60)
    elapsed = time.perf_counter() - started
    assert response.status_code == 413, response.text  # once a 500 and 2 GB
    assert words in response.json()["error"] and "upload 'x.png'" in response.json()["error"]
    assert elapsed < 2.0, elapsed


def test_studio_4xx_share_the_error_shape(studio_url, token):
    cases = [
        httpx.get(studio_url + "nowhere", timeout=60),
        httpx.get(studio_url + "api/steer", timeout=60),  # 405
        httpx.get(studio_url + "docs", timeout=60),
        httpx.get(studio_url + "openapi.json", timeout=60),
        httpx.post(studio_url + "api/steer", content=b"{", headers={"x-steerpatch-token": token,
                                                                     "content-type": "application/json"}, timeout=60),
    ]
    assert [r.status_code for r in cases] == [404, 405, 404, 404, 422]
    for response in cases:
        assert list(response.json()) == ["error"], response.text


@pytest.mark.parametrize("name", ["a..", "Not A Slug", "../escape", "a/b", "", "x" * 200, "tab\there", "fine-name"])
def test_a_bad_name_is_refused_at_save_before_any_work(studio_url, token, studio_bench, name):
    from pydantic_core import PydanticCustomError

    from steerpatch.patch.format import check_name

    try:
        check_name(name)
        valid = True
    except PydanticCustomError:
        valid = False
    started = time.perf_counter()
    response = httpx.post(studio_url + "api/patches", headers={"x-steerpatch-token": token}, timeout=60,
                          json={"key": "d0", "edits": [EDIT], "rationale": "why", "name": name})
    elapsed = time.perf_counter() - started
    if valid:  # the studio accepts exactly the names the patch format accepts (one rule, one home)
        assert response.status_code == 200, response.text
        assert (studio_bench.patch_dir / f"{name}.json").is_file()
    else:
        assert response.status_code == 422, response.text
        assert "name" in response.json()["error"] and elapsed < 1.0
        assert not [p for p in studio_bench.patch_dir.rglob("*") if name and p.name.startswith(name[:3])]

"""Studio fixtures: one workbench over the default model, SAE and test world; a live server; a browser."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# the console line Chromium writes for an answered 4xx request, which the bad-input tests provoke on purpose
ANSWERED_4XX = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d\b")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "studio"


@pytest.fixture(scope="session")
def studio_bench(concept_model, default_sae, test_world, tmp_path_factory):
    """A workbench over concept-clip, its shipped SAE (with latent statistics) and the test world."""
    from steerpatch.data import load_dataset
    from steerpatch.sae import default_sae_path, load_latent_stats
    from steerpatch.studio import Workbench

    return Workbench(
        concept_model,
        default_sae,
        load_dataset(test_world),
        patch_dir=tmp_path_factory.mktemp("studio-patches"),
        stats=load_latent_stats(default_sae_path(), sae=default_sae),
    )


@pytest.fixture(scope="session")
def studio_url(studio_bench):
    """The studio served on a free port of 127.0.0.1 from a background thread."""
    from steerpatch.studio import serve_in_thread

    running = serve_in_thread(studio_bench)
    yield running.url
    running.stop()


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium driven by Playwright."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium package (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture()
def page(browser, studio_url):
    """A fresh page on the loaded studio; console errors other than answered 4xx requests fail the test."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def on_console(message) -> None:
        # Chromium logs every 4xx answer as a console error; the bad-input tests expect those answers
        if message.type == "error" and not ANSWERED_4XX.match(message.text):
            errors.append(f"console: {message.text}")

    page.on("console", on_console)
    page.goto(studio_url)
    expect(page.locator("body")).to_have_attribute("data-ready", "true")
    yield page
    context.close()
    assert not errors, f"JavaScript or console errors on the page: {errors}"


@pytest.fixture()
def screenshot_dir() -> Path:
    """test-output/studio/ (git-ignored), for screenshots kept as test output."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS

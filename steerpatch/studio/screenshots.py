"""Regenerate the README's screenshots: the studio on a misclassified image, and its HTML ripple report.

Drives headless Chromium (Playwright with Debian's `/usr/bin/chromium`, as the studio's tests do)
through the real page: pick the first mistake, suppress its attributed latents until the prediction
moves, try the edit on other images, save and validate it, then open the report. The PNGs are
reduced to 256 colours so they stay small enough to commit.

    python -m steerpatch.studio.screenshots            # writes steerpatch/studio/readme/*.png
"""

from __future__ import annotations

import argparse
import io
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
OUT_DIR = Path(__file__).resolve().parent / "readme"
REPO_ROOT = Path(__file__).resolve().parents[2]
VIEWPORT = {"width": 1400, "height": 1000}
MAX_BYTES = 400_000


def small_png(data: bytes, path: Path) -> Path:
    """Write screenshot bytes as a 256-colour PNG (a fraction of the size; text stays sharp)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        path, format="PNG", optimize=True
    )
    return path


def _first_mistake(page: Any) -> str:
    from playwright.sync_api import expect

    page.select_option("#f-correct", "wrong")
    thumb = page.locator('#grid .thumb[data-correct="false"]').first
    expect(thumb).to_be_visible()
    key = thumb.get_attribute("data-key")
    thumb.click()
    expect(page.locator("#latents tbody tr[data-latent]").first).to_be_visible()
    return key


def capture(browser: Any, studio_url: str, out_dir: str | Path, *, name: str = "readme-shot") -> dict[str, Path]:
    """Screenshot a running studio on its first misclassified image, and the ripple report of the fix.

    Args:
        browser: a Playwright Chromium browser.
        studio_url: the studio's URL, e.g. "http://127.0.0.1:8765/".
        out_dir: where `studio.png` and `report.png` go.
        name: the name the patch is saved under (must not be saved yet).

    Returns:
        {"studio": path, "report": path}.
    """
    from playwright.sync_api import expect

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = context.new_page()
        page.goto(studio_url)
        expect(page.locator("body")).to_have_attribute("data-ready", "true")
        _first_mistake(page)
        rows = page.locator("#latents tbody tr[data-latent]")
        for i in range(rows.count()):  # suppress the strongest latents until the prediction moves
            with page.expect_response("**/api/steer"):
                rows.nth(i).locator("button.suppress").click()
            if page.locator("#verdict").get_attribute("data-changed") == "true":
                break
        page.click("#tryon-btn")
        expect(page.locator('#tryon-table tr[data-set="near"]')).to_be_visible()
        page.evaluate("window.scrollTo(0, 0)")
        studio = small_png(page.screenshot(), out / "studio.png")

        page.fill("#patch-name", name)
        page.fill("#patch-rationale", "suppress the latents that drive this mistake")
        page.click("#save-btn")
        expect(page.locator("#saved-path")).to_contain_text(f"{name}.json")
        page.click("#validate-btn")
        expect(page.locator("#verdict-value")).to_have_text(re.compile("^(pass|fail)$"), timeout=300_000)
        page.goto(urljoin(studio_url, page.locator("#report-link").get_attribute("href")))
        # the report names the policy file by absolute path; show it relative to the checkout instead
        page.evaluate("root => document.querySelectorAll('code').forEach(c => {"
                      " if (c.textContent.startsWith(root)) c.textContent = c.textContent.slice(root.length); })",
                      str(REPO_ROOT) + "/")
        report = small_png(page.screenshot(), out / "report.png")
    finally:
        context.close()
    return {"studio": studio, "report": report}


def main(argv: list[str] | None = None) -> None:
    """Open the default studio in a background thread and write the README's screenshots."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"output folder (default {OUT_DIR})")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    from steerpatch.studio import open_workbench, serve_in_thread

    with tempfile.TemporaryDirectory() as patches:
        running = serve_in_thread(open_workbench(patch_dir=patches))
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    shots = capture(browser, running.url, args.out)
                finally:
                    browser.close()
        finally:
            running.stop()
    for path in shots.values():
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":  # pragma: no cover
    main()

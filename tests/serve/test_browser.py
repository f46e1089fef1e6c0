"""The search page in a real browser: Playwright (pip) drives the system Chromium (`make test` installs it;
no browser download) against a live server on the tiny san-gal index of conftest.py.

Upload a query (a copy of a gallery image): the top hit is its identity, and its heat maps are drawn.
Page through the hits. Toggle a filter chip: every hit carries the attribute. Click a hit: it becomes the
query. A bad upload: a clear message on the page, the last query stays, the server keeps answering.
``SANGAL_SCREENSHOT=docs/serve.png`` also saves the page as the README's screenshot.
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")
K = 6  # hits per page (the page's ?k=)
QUERY = 4  # gallery row copied as the uploaded query


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        reason = "headless Chromium not installed (Debian: apt-get install chromium; `make test` does this)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{reason}; required when CI is set")
        pytest.skip(reason)
    return exe


def _wait(page, seq: int) -> str:
    """Wait until the page has finished action number ``seq``; its state (ready | error)."""
    page.wait_for_function(f"Number(document.body.dataset.seq) >= {seq} && document.body.dataset.state !== 'busy'",
                           timeout=60_000)
    return page.evaluate("document.body.dataset.state")


def _hit_ids(page) -> list[int]:
    return [int(x) for x in page.locator(".hit").evaluate_all("cards => cards.map(c => c.dataset.galleryId)")]


def _overlay(page) -> list[int]:
    """Width, height, painted pixels and a checksum of the heat-map canvas over the query."""
    return page.evaluate("""() => {
        const c = document.querySelector('#overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let painted = 0, sum = 0;
        for (let i = 0; i < d.length; i += 4) { if (d[i + 3] > 0) painted++; sum = (sum + d[i] * 3 + d[i + 2]) % 1000003; }
        return [c.width, c.height, painted, sum];
    }""")


def _upload_and_check(page, served_index, query: Path) -> None:
    page.set_input_files("#file", str(query))
    assert _wait(page, 2) == "ready"
    ids = _hit_ids(page)
    assert len(ids) == K
    assert served_index["pids"][ids[0]] == served_index["pids"][QUERY]  # the query's identity first
    assert ids[0] == QUERY  # (it is a copy of that very image)
    width, height, painted, _ = _overlay(page)
    assert width > 0 and painted == width * height  # heat map drawn over the whole query
    buttons = page.locator("#map-attributes button")
    assert buttons.count() == 27 and page.locator("#stages button").count() == 3
    before = _overlay(page)[3]
    buttons.nth(9).click()  # age: another attribute's map
    assert _overlay(page)[3] != before


def _filter_and_check(page, service, step: int) -> int:
    from sangal.search.where import where_mask

    n = len(service.index)
    chips = page.locator(".chip").evaluate_all(
        "cs => cs.map(c => [c.dataset.name, c.dataset.value, Number(c.dataset.count)])")
    name, value, count = next((a, v, c) for a, v, c in chips if 1 < c < n)
    page.click(f'.chip[data-name="{name}"][data-value="{value}"]')
    assert _wait(page, step) == "ready"
    assert page.locator(f'.chip.on[data-name="{name}"]').count() == 1
    ids = _hit_ids(page)
    assert len(ids) == min(K, count)
    shown = page.locator(".hit .attrs").all_inner_texts()
    assert all(f"{name}={value}" in text for text in shown), shown
    keeps = where_mask({name: value}, service.index.schema, service.index.attr_probs)
    assert keeps[np.array(ids)].all()  # what the page shows is what the index predicts
    return ids[1]


def _screenshot(page, path: Path) -> None:
    """The page as a small PNG (256 colours) for the README."""
    from PIL import Image

    full = Image.open(io.BytesIO(page.screenshot()))
    full.convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(path, optimize=True)


def test_upload_filter_and_click_in_chromium(live, served_index, service, tmp_path):
    exe = _chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed: pip install -e '.[test]'")
    query = tmp_path / "query.jpg"
    shutil.copy(served_index["gallery"] / served_index["paths"][QUERY], query)
    bad = tmp_path / "holiday.jpg"
    bad.write_bytes(b"this is text, not a picture")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu",
                                                               "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 760})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{live['url']}/?k={K}")
            assert _wait(page, 1) == "ready"
            assert page.locator(".hit").count() == K  # the gallery to pick a first query from
            _upload_and_check(page, served_index, query)

            page.click("#next")
            assert _wait(page, 3) == "ready"
            ranks = page.locator(".hit").evaluate_all("cs => cs.map(c => Number(c.dataset.rank))")
            assert ranks == list(range(K + 1, 2 * K + 1))

            target = _filter_and_check(page, service, 4)
            page.locator(f'.hit[data-gallery-id="{target}"]').click()
            assert _wait(page, 5) == "ready"
            assert page.locator("#query-image").get_attribute("data-gallery-id") == str(target)
            assert _hit_ids(page)[0] == target  # the clicked image is the new query (and passes the filter)
            assert _overlay(page)[2] > 0
            if os.environ.get("SANGAL_SCREENSHOT"):
                _screenshot(page, Path(os.environ["SANGAL_SCREENSHOT"]))

            page.set_input_files("#file", str(bad))
            assert _wait(page, 6) == "error"
            assert "not a JPEG or PNG" in page.locator("#error").inner_text()
            assert page.locator("#query-image").get_attribute("data-gallery-id") == str(target)
            page.locator(".hit").nth(1).click()  # the server still answers
            assert _wait(page, 7) == "ready" and page.locator("#error").is_hidden()
            assert not errors, errors
        finally:
            browser.close()

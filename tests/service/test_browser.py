"""The clinician web page in headless Chromium (Debian's ``chromium`` driven by Playwright; no browser download):
upload a DICOM through the page against a live uvicorn server, see the overlay with boxes and the findings list,
and move the threshold slider."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from service.main import create_app
from tests.service.conftest import dicom_bytes, issue_keys, make_settings

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

playwright_sync = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not Path(CHROMIUM).is_file():
    pytest.skip("Debian's chromium is not installed (`make test` installs it with apt-get when run as root)",
                allow_module_level=True)

_COLOURED_PIXELS = """(img) => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data; let n = 0;
  for (let i = 0; i < d.length; i += 4) { if (d[i] - d[i + 2] > 80) n++; }
  return n;
}"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, bundle: Path) -> Iterator[tuple[str, str]]:
    app = create_app(make_settings(tmp_path_factory.mktemp("live"), bundle))
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", issue_keys(app).clinician
    finally:
        server.should_exit = True
        thread.join(10)


def test_upload_through_the_page_shows_boxes_and_the_slider_filters_them(live_server, tmp_path: Path) -> None:
    base, key = live_server
    scan = tmp_path / "scan.dcm"
    scan.write_bytes(dicom_bytes(192, 256, seed=11))
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(base + "/")
            page.fill("#api-key", key)
            page.set_input_files("#file", str(scan))
            page.click("#upload")
            page.wait_for_selector("#findings li.finding", timeout=30_000)
            page.wait_for_function("() => document.getElementById('overlay').naturalWidth > 0", timeout=30_000)
            assert "Done:" in page.text_content("#status")
            assert page.is_visible("#warnings") and "is the default" in page.text_content("#warnings")
            items = page.locator("#findings li.finding")
            assert items.count() > 0 and "caries" in items.first.text_content()
            overlay = page.locator("#overlay")
            assert overlay.evaluate("img => img.naturalWidth") == 256
            boxes_drawn = overlay.evaluate(_COLOURED_PIXELS)
            assert boxes_drawn > 50  # orange box bands on a grey radiograph
            page.eval_on_selector("#threshold", "el => { el.value = el.max; el.dispatchEvent(new Event('input')); }")
            assert items.count() == 0
            page.wait_for_function("() => document.getElementById('overlay').dataset.threshold === '1'",
                                   timeout=30_000)
            assert overlay.evaluate(_COLOURED_PIXELS) < boxes_drawn
        finally:
            browser.close()

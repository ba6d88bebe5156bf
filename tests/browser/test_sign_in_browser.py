"""A real headless browser (Debian's chromium, driven by Playwright) signs in and consents.

Chromium comes from the system (``apt-get install chromium``, done by ``.ci/run``); Playwright
never downloads a browser. ``CHROMIUM_PATH`` points elsewhere if needed; the test fails
(never skips) when the browser is missing, as every other test does without its services.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.sync_api import sync_playwright

from ..conftest import PASSWORD, LiveServer
from ..support.op import authorize_params, make_rp, pkce_pair, query_of, redeem

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_a_browser_signs_in_consents_and_lands_on_the_redirect_uri(
    live_server: LiveServer, user: Any, tmp_path: Path
) -> None:
    services = live_server.app.extensions["oidc"]
    landing = f"{live_server.url}/health/live"  # any page of ours stands in for the client
    rp = make_rp(services, redirect_uris=[landing])
    verifier, challenge = pkce_pair()
    params = authorize_params(rp, challenge)
    from urllib.parse import urlencode

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 420, "height": 760}, java_script_enabled=False)
        page.goto(f"{live_server.url}/oauth/authorize?{urlencode(params)}")
        assert urlsplit(page.url).path == "/login"
        page.get_by_label("Email").fill("viewer@example.com")
        page.get_by_label("Password").fill(PASSWORD)
        shot = Path(os.environ.get("SCREENSHOT_DIR", tmp_path)) / "sign-in.png"
        page.screenshot(path=str(shot), full_page=True)
        page.get_by_role("button", name="Sign in").click()
        assert page.get_by_role("heading", name="Allow Partner Films?").is_visible()
        page.get_by_role("button", name="Allow").click()
        page.wait_for_url(landing + "?*")
        final = page.url
        browser.close()
    assert shot.read_bytes().startswith(b"\x89PNG")
    answer = query_of(final)
    assert answer["state"] == params["state"] and answer["iss"] == live_server.url
    with live_server.app.test_client() as client:
        tokens = redeem(client, rp, answer["code"], verifier)
    assert tokens.status_code == 200 and "id_token" in tokens.json

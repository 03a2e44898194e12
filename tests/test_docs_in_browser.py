"""The browsable API docs work in a real browser, from self-hosted assets only."""

import pytest

from tests.browser import screenshot

pytestmark = pytest.mark.browser


def test_the_docs_page_renders_every_operation_in_a_browser(live_server, browser_page):
    requested: list[str] = []
    browser_page.on("request", lambda request: requested.append(request.url))

    browser_page.goto(f"{live_server.url}/v1/docs")
    browser_page.wait_for_selector(".opblock-summary-path")

    paths = browser_page.locator(".opblock-summary-path").all_inner_texts()
    assert "/v1/messages" in paths
    assert "/v1/templates/{slug}/preview" in paths
    screenshot(browser_page, "api-docs")
    # Everything came from our own server: no CDN, nothing a closed network would block.
    assert requested and all(url.startswith(live_server.url) for url in requested)

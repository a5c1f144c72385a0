"""Review B23: the recipient pages as links cut short meet them (the real app over
HTTP, a real headless Chromium)."""

from __future__ import annotations

import pytest

from tests import browser
from tests.api_server import ApiServer
from tests.test_security_pages import _assert_private

CUT_SHORT = ["/u/", "/u", "/preferences/", "/preferences"]


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_a_link_cut_before_its_token_gets_the_not_valid_page(
    api_server: ApiServer, method: str
) -> None:
    """A long link wrapped onto two lines breaks after a slash: the first line opened
    alone, ``https://host/u/``, answered the API's JSON ``{"detail": "Not Found"}``,
    without the pages' headers, where a token cut anywhere else gets a page saying the
    link is not valid."""
    with api_server.client() as client:
        for path in CUT_SHORT:
            answer = client.request(method, path)
            assert answer.status_code == 404, (path, answer.status_code)
            assert answer.headers["content-type"].startswith("text/html"), path
            _assert_private(answer)
            if method != "HEAD":
                assert "This link is not valid" in answer.text, path
    page = browser.dom(f"{api_server.url}/u/")
    assert "<h1>This link is not valid</h1>" in page

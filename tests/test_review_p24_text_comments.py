"""The text part derived from HTML leaves out HTML comments: Outlook's conditional
comments hold the VML copy of a "bulletproof" button (its label showed twice, the second
time without its link), and a ``>`` within a comment left the comment's end as text."""

from __future__ import annotations

import pytest
import redis

from tests.helpers import run_inline, smtp_provider
from tests.smtp_server import SmtpTestServer

# As email builders write a button (buttons.cm) and a note for the next template editor.
BUTTON = """<p>Hi {{ name }},</p>
<!--[if mso]>
<v:roundrect xmlns:v="urn:schemas-microsoft-com:vml" href="https://acme.example/deal"
  style="height:40px;v-text-anchor:middle;width:200px;" arcsize="10%" fillcolor="#556270">
<w:anchorlock/><center style="color:#ffffff;">See the deal</center>
</v:roundrect>
<![endif]-->
<!--[if !mso]><!-- --><a href="https://acme.example/deal">See the deal</a><!--<![endif]-->
<!-- layout: header > nav > {{ name }} -->
<p>Bye</p>"""


@pytest.mark.parametrize(
    "html",
    [BUTTON, BUTTON.replace("{{ name }},", "{{ name | safe }},")],
    ids=["text-template-derived-once", "text-derived-per-message"],
)
def test_the_text_part_leaves_out_comments(redis_client: redis.Redis, html: str) -> None:
    with SmtpTestServer() as smtp:
        smtp_provider(redis_client, smtp.port)
        body = {
            "provider": "local",
            "subject": "Deal",
            "html": html,
            "recipients": [{"email": "ann@example.com", "vars": {"name": "Ann"}}],
        }
        _, results = run_inline(redis_client, body)
        assert [r.counts for r in results] == [{"sent": 1}]
        [received] = smtp.messages
    text = received.message.get_body(("plain",))
    assert text is not None
    assert (
        text.get_content().replace("\r\n", "\n")
        == "Hi Ann,\n\nSee the deal (https://acme.example/deal)\n\nBye"
    )
    # The HTML part is sent as written, comments and all (Outlook reads them).
    html_part = received.message.get_body(("html",))
    assert html_part is not None and "<!--[if mso]>" in html_part.get_content()

"""The bytes of one SMTP message: dispatch's MIME writer against the standard library's.

Builds the same messages (the SMTP benchmark's 2 KB HTML with its derived text part) with
``providers.mime.MimeWriter`` and with ``email.message.EmailMessage`` (plain text, then
the HTML as its alternative, serialised with ``as_bytes``), and prints the CPU time a
message of each, in the same run, with the ratio. Three bodies: the HTML on one line (it
goes quoted-printable), the same HTML with a line break after each paragraph (ASCII in
short lines: it goes as it is, ``7bit``), and that one with non-ASCII names.

    .venv/bin/python -m bench.mime_write [--messages 2000]
"""

from __future__ import annotations

import argparse
import time
from email.message import EmailMessage
from email.policy import SMTP

from bench.smtp_e2e import HTML
from dispatch.text_part import html_to_text
from providers.base import OutgoingMessage
from providers.mime import MimeWriter


def messages(count: int, *, lines: bool, name: str) -> list[OutgoingMessage]:
    html = HTML.replace("</p>", "</p>\n") if lines else HTML
    out = []
    for i in range(count):
        body = (
            html.replace("{{ first_name }}", f"{name}{i}")
            .replace("{{ city }}", "Lisbon")
            .replace("{{ member_no }}", str(100000 + i))
        )
        out.append(
            OutgoingMessage(
                seq=i,
                meta=f"user{i}@bench.example|1|c|20261124|0|d|{i}|",
                campaign_id="c",
                to=f"user{i}@bench.example",
                subject=f"{name}{i}, your Lisbon picks",
                html=body,
                text=html_to_text(body),
                from_address="deals@acme.example",
                from_name="Acme Deals",
            )
        )
    return out


def stdlib(msg: OutgoingMessage) -> bytes:
    """The same message the way a script without dispatch writes it."""
    email = EmailMessage(policy=SMTP)
    email["From"] = f"{msg.from_name} <{msg.from_address}>"
    email["To"] = msg.to
    email["Subject"] = msg.subject
    email["X-CleverTap_META"] = msg.meta
    email.set_content(msg.text)
    email.add_alternative(msg.html, subtype="html")
    return email.as_bytes()


def per_message(write: object, batch: list[OutgoingMessage]) -> float:
    """CPU seconds a message (best of three passes)."""
    assert callable(write)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for msg in batch:
            write(msg)
        best = min(best, time.process_time() - started)
    return best / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=2000)
    count = parser.parse_args().messages
    writer = MimeWriter(campaign_id="c")
    for label, lines, name in (
        ("HTML on one line", False, "Name"),
        ("HTML in short lines", True, "Name"),
        ("short lines, non-ASCII", True, "Zoë"),
    ):
        batch = messages(count, lines=lines, name=name)
        ours = per_message(writer.write, batch)
        theirs = per_message(stdlib, batch)
        print(
            f"  {label:24s} MimeWriter {ours * 1e6:6.1f} us  EmailMessage {theirs * 1e6:7.1f} us"
            f"  ratio {ours / theirs:.3f}"
        )


if __name__ == "__main__":
    main()

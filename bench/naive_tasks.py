"""The naive baseline of bench/smtp_e2e.py: how dispatch jobs are often written.

One Celery task per message; the message built with ``email.message.EmailMessage`` and
rendered with Jinja2 (compiled per task), sent with ``smtplib`` over a new connection.
"""

from __future__ import annotations

import os
import smtplib
from email.message import EmailMessage

import jinja2
from celery import Celery

app = Celery("naive", broker=os.environ.get("DISPATCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(task_default_queue="naive", task_ignore_result=True, worker_prefetch_multiplier=4)


@app.task(name="naive.send_one")
def send_one(port: int, to: str, subject: str, html: str, variables: dict[str, object]) -> None:
    env = jinja2.Environment(autoescape=True)
    msg = EmailMessage()
    msg["From"] = "Acme Deals <deals@acme.example>"
    msg["To"] = to
    msg["Subject"] = env.from_string(subject).render(variables)
    msg["X-CleverTap_META"] = f"{to}|1|naive|20260101|0|default|0|"
    msg.set_content("This message has an HTML part.")
    msg.add_alternative(env.from_string(html).render(variables), subtype="html")
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.send_message(msg)

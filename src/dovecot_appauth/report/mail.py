"""Report mail: build the message and hand it to the local sendmail."""

from __future__ import annotations

import os
from typing import Any

from .data import ReportError
from .render import render_text


def find_sendmail() -> str:
    import shutil

    found = shutil.which("sendmail")
    if found:
        return found
    for path in ("/usr/sbin/sendmail", "/usr/lib/sendmail"):
        if os.access(path, os.X_OK):
            return path
    raise ReportError("--mail-to: no sendmail found (install an MTA such as postfix, or use --output)")


def build_mail(data: dict[str, Any], body: str, fmt: str, to: list[str], sender: str | None) -> bytes:
    from email.message import EmailMessage
    from email.policy import SMTP

    msg = EmailMessage()
    t = data["totals"]
    msg["Subject"] = (f"dovecot-appauth report: {t['logins']} logins, {t['blocked']} blocked, "
                      f"{t['alerts']} alerts since {data['since'][:16]} UTC")
    msg["To"] = ", ".join(to)
    if sender:
        msg["From"] = sender
    if fmt == "html":
        msg.set_content(render_text(data))
        msg.add_alternative(body, subtype="html")
    elif fmt == "json":
        msg.set_content(body, subtype="plain")
        msg.add_attachment(body.encode("utf-8"), maintype="application", subtype="json", filename="report.json")
    else:
        msg.set_content(body)
    return msg.as_bytes(policy=SMTP)


def send_mail(message: bytes, timeout: float = 60) -> None:
    import subprocess

    sendmail = find_sendmail()
    try:
        proc = subprocess.run([sendmail, "-t", "-oi"], input=message, capture_output=True, timeout=timeout,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ReportError(f"--mail-to: {sendmail}: {e}") from None
    if proc.returncode != 0:
        detail = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ReportError(f"--mail-to: {sendmail} exited {proc.returncode}"
                          + (f": {detail[-1][:200]}" if detail else ""))

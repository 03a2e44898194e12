"""A small SMTP server (aiosmtpd) that keeps what it receives: development and tests.

`make run` starts it on 127.0.0.1:1025 writing each email to a Maildir under var/, where
a developer can read it (any mail client, or `ls var/maildir/new`). Tests run it on a free
port and keep mail in memory.
"""

import logging
import mailbox
from collections.abc import Callable
from email import message_from_bytes
from email.message import Message as MimeMessage
from email.policy import default as default_policy
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

log = logging.getLogger(__name__)


class SinkHandler:
    """aiosmtpd handler: parse each email and pass it to `store`; answer 250.

    `reply_for` may return an SMTP reply (e.g. "451 4.3.0 try later") to refuse a message,
    which is how tests make a server that fails on purpose.
    """

    def __init__(
        self,
        store: Callable[[MimeMessage, Envelope], None],
        reply_for: Callable[[Envelope], str | None] | None = None,
    ) -> None:
        self.store = store
        self.reply_for = reply_for

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.reply_for is not None:
            reply = self.reply_for(envelope)
            if reply:
                return reply
        email = message_from_bytes(
            envelope.original_content or envelope.content, policy=default_policy
        )
        self.store(email, envelope)
        return "250 2.0.0 OK"


def maildir_store(path: Path) -> Callable[[MimeMessage, Envelope], None]:
    box = mailbox.Maildir(str(path), create=True)

    def store(email: MimeMessage, envelope: Envelope) -> None:
        box.add(envelope.original_content or envelope.content)
        log.info(
            "received %s for %s: %s",
            email["Message-ID"],
            ", ".join(envelope.rcpt_tos),
            email["Subject"],
        )

    return store


def start(handler: SinkHandler, host: str, port: int) -> Controller:
    # The size limit matches what a receiving MTA would accept; 0 would mean unlimited.
    controller = Controller(handler, hostname=host, port=port, data_size_limit=25 * 1024 * 1024)
    controller.start()
    return controller

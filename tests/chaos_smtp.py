"""A misbehaving SMTP server for chaos tests (aiosmtpd on 127.0.0.1).

At random, but reproducibly (the choice for a command depends only on the seed, the
address, how many times that address came to this command before, and the command), it
answers MAIL, RCPT or DATA with a throttling, transient or permanent reply, drops the
connection, or stalls past the client's timeout. DATA may also go wrong after the
message was taken: the connection dropped or the reply stalled before the client read
the 250 (an ``ambiguous`` acceptance: the client cannot know), or dropped right after it.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.smtp_server import Handler, SmtpTestServer

REFUSALS = ("421", "451", "452", "454", "550", "552")
BEFORE = (*REFUSALS, "DROP", "STALL")
# After DATA's message was taken: no reply (dropped / stalled) or the 250 and then a drop.
AFTER = ("TAKEN_DROP", "TAKEN_STALL", "TAKEN_THEN_DROP")


@dataclass
class ChaosHandler(Handler):
    seed: int = 0
    rate: float = 0.03  # the chance that one command goes wrong
    stall: float = 1.0  # seconds; more than the provider's timeout
    accepted: list[str] = field(default_factory=list)  # a 250 was sent after DATA
    ambiguous: list[str] = field(default_factory=list)  # taken, the 250 never read
    # Taken, 250 sent, then dropped: a reset may still wipe the 250 before the client reads it.
    dropped_after: list[str] = field(default_factory=list)
    seen: Counter[tuple[str, str]] = field(default_factory=Counter)
    chaos: Counter[str] = field(default_factory=Counter)
    log: list[tuple[int, str, str, str]] = field(default_factory=list)  # conn, cmd, addr, choice

    def _pick(
        self, command: str, address: str, choices: tuple[str, ...], conn: int = 0
    ) -> str | None:
        choice = self._choose(command, address, choices)
        self.log.append((conn, command, address, choice or "ok"))
        return choice

    def _choose(self, command: str, address: str, choices: tuple[str, ...]) -> str | None:
        n = self.seen[(command, address)]
        self.seen[(command, address)] += 1
        digest = hashlib.sha256(f"{self.seed}|{command}|{address}|{n}".encode()).digest()
        roll = int.from_bytes(digest[:8], "big") / 2**64
        if roll >= self.rate:
            return None
        choice = choices[digest[8] % len(choices)]
        self.chaos[f"{command} {choice}"] += 1
        return choice

    async def _misbehave(self, server: SMTP, choice: str) -> str:
        if choice == "STALL":
            await asyncio.sleep(self.stall)
            return "451 4.3.0 late"
        if choice == "DROP":
            return self._answer(server, "DROP")
        code = choice
        text = {"421": "4.3.2 busy", "550": "5.1.1 no such user", "552": "5.2.2 full"}
        return self._answer(server, f"{code} {text.get(code, '4.3.0 try again')}")

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        # MAIL names only the sender: its choices are keyed by the sender and a running
        # count (so they depend on the order commands arrive in).
        choice = self._pick("MAIL", address, BEFORE, id(server))
        if choice:
            return await self._misbehave(server, choice)
        return await super().handle_MAIL(server, session, envelope, address, options)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        choice = self._pick("RCPT", address, BEFORE, id(server))
        if choice:
            return await self._misbehave(server, choice)
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        address = str(envelope.rcpt_tos[0]) if envelope.rcpt_tos else ""
        choice = self._pick("DATA", address, BEFORE + AFTER, id(server))
        if choice in BEFORE:
            return await self._misbehave(server, choice)
        if choice == "TAKEN_DROP":
            self.ambiguous.extend(envelope.rcpt_tos)
            return self._answer(server, "DROP")
        if choice == "TAKEN_STALL":
            self.ambiguous.extend(envelope.rcpt_tos)
            await asyncio.sleep(self.stall)
            return "250 OK queued (late)"
        self.accepted.extend(envelope.rcpt_tos)
        if choice == "TAKEN_THEN_DROP":
            self.dropped_after.extend(envelope.rcpt_tos)
            transport = server.transport
            assert transport is not None
            asyncio.get_running_loop().call_later(0.01, transport.abort)
        return "250 OK queued"


class ChaosSmtpServer(SmtpTestServer):
    def __init__(self, seed: int, rate: float = 0.03, stall: float = 1.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.handler = ChaosHandler(seed=seed, rate=rate, stall=stall)

    @property
    def chaos(self) -> ChaosHandler:
        assert isinstance(self.handler, ChaosHandler)
        return self.handler

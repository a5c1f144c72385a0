"""Provider sessions kept open from one batch to the next in a worker process.

Without it every batch connects anew: a TCP connect, and with a real provider a TLS
handshake (a few milliseconds of CPU and two round trips over the internet) and the SMTP
greeting, EHLO and AUTH, once per session per batch of 1000. A batch's sessions are kept
here when it ends and the next batch of the same provider in this process takes them.

A kept session keeps its connection slot (``max_connections`` counts open connections,
idle or not; dispatch.limits), parked with a short expiry instead of renewed: it frees
itself if the process goes away. Slots are not hoarded: when a sender anywhere waits for
a slot of the provider, a session is not kept (nor taken back), so that slots still go
round the worker processes as they did before sessions were kept. A kept session is
closed, and its slot given back,

- after ``idle_seconds`` unused (dispatch.runtime closes it between tasks),
- when a batch of another provider, or of a changed configuration, runs in the process,
  or a batch that needs fewer sessions (an idle session would hold a slot for nothing),
- when its slot expired before it was taken again (another worker may hold it now).

A session that died while kept (the server closed an idle connection) reconnects on its
next send: the SMTP session checks its connection before each chunk, httpcore drops a
keep-alive connection the server closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from dispatch.limits import ConnectionSlots
from providers.base import Session

# How long a parked slot outlives its session's idle time: the close (by the next task or
# by the runtime between tasks) comes first, unless the process is gone.
SLOT_GRACE_SECONDS = 2.0
# How long a goodbye (SMTP QUIT) may take before the connection is simply dropped: a
# batch closing another provider's idle sessions must not wait on a server gone quiet.
CLOSE_SECONDS = 2.0


@dataclass(eq=False)
class KeptSession:
    """A sender's connection slot and the provider session open on it (``None`` until
    its first send, or after it died), with the stack that closes the session."""

    key: tuple[str, str]  # the provider's nickname and stored configuration
    slots: ConnectionSlots
    token: str
    session: Session | None = None
    stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    idle_since: float = 0.0
    slot_lost: bool = False  # told by the renewal: close the session, wait for one
    on_wire: bool = False  # its sender is opening the session or sending on it
    closing: asyncio.Task[None] | None = None  # the close :meth:`lose_slot` began

    def lose_slot(self) -> None:
        """The slot could not be renewed in time (it may expire, and another sender take
        it): an idle session closes now (its sender may be waiting for Redis or its
        pace: it came back to close it only at its next chunk, its connection still
        open when another sender's opened), one on the wire once its send ends; its
        sender opens none before it holds a slot again."""
        self.slot_lost = True
        if not self.on_wire and self.session is not None:
            self.session = None
            stack, self.stack = self.stack, contextlib.AsyncExitStack()
            self.closing = asyncio.get_running_loop().create_task(_close_stack(stack))

    @contextlib.contextmanager
    def in_use(self) -> Iterator[None]:
        """Its sender opens the session or sends on it (:meth:`lose_slot` waits)."""
        self.on_wire = True
        try:
            yield
        finally:
            self.on_wire = False

    async def drop_session(self) -> None:
        """Close the session (it failed) and keep the slot for the next one."""
        self.session = None
        stack, self.stack = self.stack, contextlib.AsyncExitStack()
        await _close_stack(stack)
        await self.closed()

    async def closed(self) -> None:
        """Wait for a close :meth:`lose_slot` began to end."""
        if self.closing is not None:
            await asyncio.wait([self.closing])
            self.closing = None

    async def close(self) -> None:
        """Close the session and give its slot back (errors are not the caller's)."""
        await _close_stack(self.stack)
        await self.closed()
        with contextlib.suppress(Exception):
            await self.slots.release(self.token)


class SessionPool:
    """The idle sessions of one worker process (one event loop)."""

    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self._idle: list[KeptSession] = []

    def __len__(self) -> int:
        return len(self._idle)

    async def take(self, key: tuple[str, str], n: int) -> list[KeptSession]:
        """Up to ``n`` idle sessions of ``key``, the most recently used first, with their
        slots held again; every other idle session is closed."""
        now = time.monotonic()
        fresh = [
            k
            for k in reversed(self._idle)
            if k.key == key and now - k.idle_since < self.idle_seconds
        ]
        taken = fresh[:n]
        others = [k for k in self._idle if k not in taken]
        self._idle = []
        await _close(others)
        held = await asyncio.gather(*(k.slots.retake(k.token) for k in taken))
        await _close([k for k, ok in zip(taken, held, strict=True) if not ok])
        return [k for k, ok in zip(taken, held, strict=True) if ok]

    async def keep(self, kept: KeptSession) -> None:
        """Keep ``kept`` (whose sender is done with it) for the next batch, or close it
        when it has no session."""
        if self.idle_seconds <= 0 or kept.session is None:
            await kept.close()
            return
        kept.idle_since = time.monotonic()
        try:
            parked = await kept.slots.park(kept.token, self.idle_seconds + SLOT_GRACE_SECONDS)
        except Exception:
            await kept.close()
            raise
        if parked:
            self._idle.append(kept)
        else:  # wanted by a sender that waits (or expired): the session goes with it
            await kept.close()

    def next_expiry(self) -> float | None:
        """Seconds until the oldest idle session is due to close (None: nothing kept)."""
        if not self._idle:
            return None
        oldest = min(k.idle_since for k in self._idle)
        return max(0.0, oldest + self.idle_seconds - time.monotonic())

    async def close_idle(self) -> None:
        """Close the sessions idle for ``idle_seconds`` or longer."""
        now = time.monotonic()
        due = [k for k in self._idle if now - k.idle_since >= self.idle_seconds]
        self._idle = [k for k in self._idle if k not in due]
        await _close(due)

    async def close_all(self) -> None:
        idle, self._idle = self._idle, []
        await _close(idle)


async def _close_stack(stack: contextlib.AsyncExitStack) -> None:
    """Close a session; past CLOSE_SECONDS its goodbye is cut short (the transport is
    closed all the same: the session's own cleanup runs on cancellation)."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(stack.aclose(), CLOSE_SECONDS)


async def _close(sessions: list[KeptSession]) -> None:
    if sessions:
        await asyncio.gather(*(k.close() for k in sessions))

"""The MLLP listener `touchpoint serve --mllp-port` runs beside the web app.

MLLP frames each message as ``<VT> message <FS><CR>`` (0x0B … 0x1C 0x0D). The listener is
python-hl7's asyncio server (``hl7.mllp.start_hl7_server``) on the same event loop as
uvicorn; each message is applied in a worker thread (:func:`asyncio.to_thread`), so the
database never blocks the loop, and answered with its ACK on the same connection.

One connection, one message at a time, in order — what interface engines such as Mirth
expect. What goes wrong with one frame stays with that frame:

* bytes before the ``<VT>`` of a frame (a stray newline) are ignored;
* a frame without ``<VT>``, or one that is not HL7 → ``AR``, and the connection reads on;
* a frame over :data:`MAX_FRAME` bytes (1 MiB) → ``AR`` and the connection is closed
  (where the next frame starts cannot be known);
* an error while applying → ``AE`` (engine/hl7/receive.py); the next message is served.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

from hl7.mllp import HL7StreamReader, HL7StreamWriter, start_hl7_server

from engine import clock
from engine.hl7 import ack as acks
from engine.hl7.receive import Outcome, Receiver
from engine.settings import Settings
from engine.store.database import Database

log = logging.getLogger("touchpoint.hl7")

START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"
#: The largest message the listener takes (bytes, without the framing).
MAX_FRAME = 1024 * 1024


class MllpListener:
    """``await start()``, then ``await close()``; :attr:`port` is the port bound."""

    def __init__(self, receiver: Receiver, host: str, port: int, *,
                 max_frame: int = MAX_FRAME) -> None:
        self.receiver = receiver
        self.host = host
        self.port = port
        self.max_frame = max_frame
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await start_hl7_server(self._serve, self.host, self.port,
                                              limit=self.max_frame + len(END_BLOCK) + 1)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("hl7: listening for MLLP on %s:%d", self.host, self.port)
        return self.port

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._clients):
            task.cancel()
        for task in list(self._clients):
            with suppress(asyncio.CancelledError, Exception):
                await task
        await self._server.wait_closed()
        self._server = None

    def _serve(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._connection(reader, writer))
        self._clients.add(task)
        task.add_done_callback(self._clients.discard)

    async def _connection(self, reader: HL7StreamReader, writer: HL7StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        where = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"
        try:
            while await self._one_frame(reader, writer, where):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with suppress(Exception):
                await writer.wait_closed()

    async def _one_frame(self, reader: HL7StreamReader, writer: HL7StreamWriter,
                         where: str) -> bool:
        """Read, apply and answer one frame; False when the connection is done."""
        try:
            chunk = await reader.readuntil(END_BLOCK)
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                log.warning("hl7: %s closed the connection in the middle of a frame", where)
            return False
        except asyncio.LimitOverrunError:
            log.warning("hl7: %s sent a frame over %d bytes; answered AR and closed", where,
                        self.max_frame)
            await self._answer(writer, self._reject(f"the message is over {self.max_frame} "
                                                    "bytes - Touchpoint takes up to 1 MiB"))
            return False
        start = chunk.rfind(START_BLOCK)
        if start < 0:
            await self._answer(writer, self._reject("not an MLLP frame: it must start with "
                                                    "<VT> (0x0B)"))
            return True
        payload = chunk[start + 1:-len(END_BLOCK)]
        try:
            outcome = await _in_thread(self.receiver.receive, payload, source=f"mllp:{where}")
        except Exception as exc:  # (receive answers whatever a message holds; this is a bug)
            log.error("hl7: a frame from %s could not be processed (%s)", where,
                      type(exc).__name__)
            await self._answer(writer, self._reject("Touchpoint could not process it "
                                                    "(internal error) - send it again later"))
            return True
        await self._answer(writer, outcome.ack)
        return True

    def _reject(self, reason: str) -> str:
        log.warning("hl7: rejected a frame: %s", reason)
        return acks.reject_unreadable(now=clock.now(), control_id="TPREJECT", text=reason)

    @staticmethod
    async def _answer(writer: HL7StreamWriter, ack: str) -> None:
        writer.writeblock(ack.encode("utf-8", "replace"))
        await writer.drain()


async def _in_thread(function: Callable[..., Outcome], *args: Any, **kwargs: Any) -> Outcome:
    return await asyncio.to_thread(function, *args, **kwargs)


async def run_with(serve: Callable[[], Awaitable[None]], listener: MllpListener) -> None:
    """Start the listener, run ``serve`` (uvicorn's ``Server.serve``) until it returns,
    then close the listener: both on one event loop."""
    await listener.start()
    try:
        await serve()
    finally:
        await listener.close()


def build(asgi: Any, settings: Settings, database: Database, *, host: str, port: int,
          on_applied: Callable[[], None] | None = None) -> tuple[Any, MllpListener]:
    """uvicorn's Server for ``asgi`` on ``port`` and the MLLP listener on
    ``settings.hl7.mllp_port`` (0: any free port), not started."""
    import uvicorn

    assert settings.hl7.mllp_port is not None
    receiver = Receiver(database, settings, on_applied=on_applied)
    listener = MllpListener(receiver, host, settings.hl7.mllp_port)
    server = uvicorn.Server(uvicorn.Config(asgi, host=host, port=port, log_level="info",
                                           access_log=False, log_config=None))
    return server, listener


def serve_with_mllp(asgi: Any, settings: Settings, database: Database, *, host: str,
                    port: int, on_applied: Callable[[], None] | None = None) -> None:
    """`touchpoint serve --mllp-port`: uvicorn serving ``asgi`` on ``port`` and the MLLP
    listener, on one event loop, until uvicorn stops (SIGINT/SIGTERM)."""
    server, listener = build(asgi, settings, database, host=host, port=port,
                             on_applied=on_applied)
    asyncio.run(run_with(server.serve, listener))

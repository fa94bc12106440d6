"""Several ``ratesvc serve`` processes sharing PostgreSQL and Redis, for the multi-replica tests.

The sandboxes run in the test's own event loop (so the test reads their call counters directly);
each replica is a real ``python -m ratesvc serve`` process with its own port and data directory.
Backends are reached through :class:`CuttableProxy`, so a test can take PostgreSQL or Redis away
from the replicas (and give it back) without touching the machine's shared servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class CuttableProxy:
    """A TCP relay to ``target`` that can be cut (every connection closed, new ones refused)
    and restored: a backend going away and coming back, as the replicas see it."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = free_port()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def restore(self) -> None:
        """Listen again (after :meth:`cut`), or let the bytes flow again (after :meth:`freeze`)."""
        self._flowing.set()
        if self._server is None:
            await self.start()

    def freeze(self) -> None:
        """Keep every connection open and accept new ones, but relay nothing: a backend that
        hangs (a network partition, a server stuck) rather than refuses."""
        self._flowing.clear()

    async def close(self) -> None:
        await self.cut()

    def url_for(self, url: str) -> str:
        """``url`` with its host and port replaced by this relay's."""
        parts = urlsplit(url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            await asyncio.gather(
                _pump(reader, upstream_writer, self._flowing),
                _pump(upstream_reader, writer, self._flowing),
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._pipes.discard(task)
            for w in (writer, upstream_writer):
                if w is not None:
                    w.close()


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event
) -> None:
    while data := await reader.read(65536):
        await flowing.wait()
        writer.write(data)
        await writer.drain()
    writer.close()


@dataclass
class Replica:
    name: str
    port: int
    data_dir: Path
    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir / "replica.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ratesvc", "serve",
            env={**os.environ, **self.env, "RATESVC_PORT": str(self.port),
                 "RATESVC_DATA_DIR": str(self.data_dir)},
            stdout=out, stderr=out,
        )  # fmt: skip
        out.close()

    async def wait_ready(self, session: aiohttp.ClientSession, seconds: float = 30) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while True:
            assert self.process is not None
            if self.process.returncode is not None:
                raise AssertionError(f"{self.name} exited {self.process.returncode}: {self.tail()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{self.url}/readyz") as response:
                    if response.status == 200:
                        return
            if loop.time() > end:
                raise AssertionError(f"{self.name} not ready in {seconds} s: {self.tail()}")
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no cleanup, leases left to expire."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)

    async def stop(self, grace_s: float = 20) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), grace_s)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Replicas:
    """``count`` replicas with one environment; ``next()`` picks them round-robin."""

    def __init__(self, root: Path, env: Mapping[str, str], count: int) -> None:
        self.members = [
            Replica(f"replica-{i}", free_port(), root / f"replica-{i}", dict(env))
            for i in range(count)
        ]
        self._turn = itertools.cycle(self.members)

    def next(self) -> Replica:
        return next(self._turn)

    async def start(self, session: aiohttp.ClientSession) -> None:
        for member in self.members:
            await member.start()
        for member in self.members:
            await member.wait_ready(session)

    async def stop(self, grace_s: float = 20) -> None:
        await asyncio.gather(*(member.stop(grace_s) for member in self.members))


@contextlib.asynccontextmanager
async def running(
    root: Path, env: Mapping[str, str], count: int
) -> AsyncIterator[tuple[Replicas, aiohttp.ClientSession]]:
    async with aiohttp.ClientSession() as session:
        replicas = Replicas(root, env, count)
        try:
            await replicas.start(session)
            yield replicas, session
        finally:
            await replicas.stop()


def round_robin(replicas: Replicas, n: int) -> Sequence[Replica]:
    return [replicas.next() for _ in range(n)]

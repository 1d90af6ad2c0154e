"""A tiny HTTP CONNECT proxy, as a corporate network has: it records what it was asked and can misbehave.

It only ever connects to loopback: to a literal 127.0.0.0/8 or ::1 address, or to a name it was
given an address for (``names``, exact or ``*.suffix``, as the upstream proxy's own DNS would
answer). Anything else is refused with 502, so nothing a test does can leave the machine.

``behaviour`` picks the answer to the next CONNECTs: ``relay`` (200, then bytes both ways),
``407``/``403``/``502`` (that status; 407 with ``Proxy-Authenticate``), ``close`` (reads the
request, closes without a word), ``garbage`` (bytes that are not HTTP), ``hang`` (reads the
request, never answers). ``require_auth(user, password)`` answers 407 to a CONNECT without those
Basic credentials. Every CONNECT is recorded (its authority, its ``Proxy-Authorization``, what it
got); so is any request that is not CONNECT (it gets 405: a forwarded request is a bug).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import threading
from collections.abc import Mapping
from dataclasses import dataclass

Address = tuple[str, int]
BEHAVIOURS = ("relay", "407", "403", "502", "close", "garbage", "hang")
_REASONS = {200: "Connection established", 403: "Forbidden", 405: "Method Not Allowed",
            407: "Proxy Authentication Required", 502: "Bad Gateway"}
MAX_HEAD = 64 * 1024
KEEP_BYTES = 256 * 1024  # of each tunnel's client-to-server bytes, for tests that look for secrets


@dataclass(frozen=True)
class Asked:
    """One request the proxy received."""

    method: str
    authority: str  # the CONNECT target, or the request target of anything else
    proxy_authorization: str | None
    answer: str  # "200", "407", ..., "close", "garbage", "hang"

    @property
    def relayed(self) -> bool:
        return self.method == "CONNECT" and self.answer == "200"


class ConnectProxy:
    """Serves on 127.0.0.1 from its own thread; ``start()`` returns the address."""

    def __init__(self) -> None:
        self.names: dict[str, Address] = {}
        self.behaviour = "relay"
        self._credentials: str | None = None
        self._asked: list[Asked] = []
        self._sent: list[bytearray] = []
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.address: Address = ("127.0.0.1", 0)

    # -- control, from any thread ------------------------------------------------------------------------

    def start(self, names: Mapping[str, Address] | None = None) -> Address:
        self.names = dict(names or {})
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
            self.address = self._server.sockets[0].getsockname()[:2]
            ready.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="fakegoogle-connect-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake CONNECT proxy did not start")
        return self.address

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shut() -> None:
            assert self._server is not None
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            loop.stop()

        asyncio.run_coroutine_threadsafe(shut(), loop)
        thread.join(10)
        self._loop = self._thread = None

    def reset(self) -> None:
        """Relay everything, ask for no credentials, forget what was asked."""
        self.behaviour = "relay"
        self._credentials = None
        with self._lock:
            self._asked.clear()
            self._sent.clear()

    def require_auth(self, user: str | None, password: str = "") -> None:
        """Answer 407 unless a CONNECT carries these Basic credentials (None: no auth needed)."""
        self._credentials = None if user is None else base64.b64encode(f"{user}:{password}".encode()).decode()

    @property
    def asked(self) -> list[Asked]:
        with self._lock:
            return list(self._asked)

    def sent_bytes(self) -> list[bytes]:
        """What clients sent through each relayed tunnel (the first KEEP_BYTES of each)."""
        with self._lock:
            return [bytes(b) for b in self._sent]

    def relayed(self) -> list[str]:
        """The authority of every CONNECT it relayed, in order."""
        return [a.authority for a in self.asked if a.relayed]

    def wait_for(self, count: int, timeout: float = 15.0) -> list[Asked]:
        """Block until at least ``count`` requests were received (a condition, not a sleep)."""
        with self._changed:
            self._changed.wait_for(lambda: len(self._asked) >= count, timeout)
            return list(self._asked)

    # -- serving, on its loop ----------------------------------------------------------------------------

    def _record(self, asked: Asked) -> None:
        with self._changed:
            self._asked.append(asked)
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        target = rest.rpartition(" ")[0]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        auth = headers.get("proxy-authorization")
        if method != "CONNECT":
            self._record(Asked(method, target, auth, "405"))
            await self._answer(writer, 405)
            return
        behaviour = self.behaviour
        expected = self._credentials
        if expected is not None and auth != f"Basic {expected}":
            self._record(Asked(method, target, auth, "407"))
            await self._answer(writer, 407)
            return
        if behaviour != "relay":
            self._record(Asked(method, target, auth, behaviour))
            if behaviour.isdigit():
                await self._answer(writer, int(behaviour))
            elif behaviour == "garbage":
                writer.write(b"\x16\x03\x01\x00\x05hello, not http\r\n\r\n")
                await writer.drain()
                await reader.read()
            elif behaviour == "hang":
                await reader.read()  # until the client gives up
            return
        address = self._address_for(target)
        if address is None:
            self._record(Asked(method, target, auth, "502"))
            await self._answer(writer, 502)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*address)
        except OSError:
            self._record(Asked(method, target, auth, "502"))
            await self._answer(writer, 502)
            return
        self._record(Asked(method, target, auth, "200"))
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        sent = bytearray()
        with self._lock:
            self._sent.append(sent)
        try:
            await asyncio.gather(_pump(reader, up_writer, sent), _pump(up_reader, writer))
        finally:
            up_writer.close()

    def _address_for(self, authority: str) -> Address | None:
        host, sep, port_text = authority.rpartition(":")
        if not sep or not port_text.isdigit():
            return None
        host = host.strip("[]").lower().rstrip(".")
        try:
            if ipaddress.ip_address(host).is_loopback:
                return host, int(port_text)
            return None
        except ValueError:
            pass
        for pattern, address in self.names.items():
            if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
                return address
        return None

    @staticmethod
    async def _answer(writer: asyncio.StreamWriter, status: int) -> None:
        extra = 'Proxy-Authenticate: Basic realm="fake"\r\n' if status == 407 else ""
        body = f"fake upstream proxy says {status}\n"
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n{extra}Content-Length: {len(body)}\r\n"
                     f"Connection: close\r\n\r\n{body}".encode())
        await writer.drain()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep: bytearray | None = None) -> None:
    try:
        while data := await reader.read(65536):
            if keep is not None and len(keep) < KEEP_BYTES:
                keep += data[:KEEP_BYTES - len(keep)]
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()

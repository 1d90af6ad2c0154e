"""``run --isolate``: the child in its own network namespace, where loopback leads only to the proxy.

A network fence, not a sandbox. Linux, unprivileged, no setuid helper and no ``ip`` binary:

1. ``spawn()`` starts this file as a helper (``python -I proxy/isolate.py FD``, standard library
   only: no fork of our threaded process runs Python code) and sends it, over an inherited
   ``socketpair``, the command, its environment and the loopback ports to provide.
2. The helper unshares a user namespace and a network namespace (``CLONE_NEWUSER|CLONE_NEWNET``),
   maps its own uid and gid to themselves (no root inside), brings ``lo`` up (``SIOCSIFFLAGS``),
   and binds a listening socket on ``127.0.0.1:PORT`` *inside* the namespace for each port.
3. It hands those listening sockets back over the socketpair (``SCM_RIGHTS``): a socket belongs to
   the namespace it was made in, so our event loop, outside, accepts connections made inside and
   relays each to the same port on the real loopback, where the proxy and the placeholder metadata
   endpoint listen. The child's ``HTTPS_PROXY`` is therefore the same URL as in a plain ``run``.
4. The helper execs the command (its pid becomes the command's: signals and the exit status pass
   as in a plain ``run``). The socketpair closes on exec; if exec fails, the errno comes back first.

Inside, the namespace has only ``lo``: no routes, so a connection to any other address (the real
metadata server at 169.254.169.254, a DNS server from ``/etc/resolv.conf``) fails at once with
ENETUNREACH, and loopback holds nothing but the forwarded ports. Not fenced: the file system
(files, and Unix sockets in it, such as a Docker or a name-service socket), other processes of
the same user (no PID namespace), and privileges (the child keeps the caller's uid).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REFUSED_SENTENCE = (
    "cannot isolate the command: the kernel refused an unprivileged user and network namespace "
    "({reason}); check the sysctls kernel.unprivileged_userns_clone and user.max_user_namespaces "
    "(and kernel.apparmor_restrict_unprivileged_userns on Ubuntu)"
)
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
_IFREQ_SIZE = 40  # struct ifreq on Linux
_MAX_FRAME = 16 * 1024 * 1024
HELPER_EXIT_REFUSED = 69
SETUP_TIMEOUT = 30.0
CLOSE_TIMEOUT = 2.0  # the helper needs milliseconds; a wedged one must not hang `run`


# -- the wire between parent and helper: length-prefixed JSON frames ------------------------------------


def _send(sock: socket.socket, message: dict[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    frame = struct.pack("!I", len(data)) + data
    if fds:
        socket.send_fds(sock, [frame], list(fds))
    else:
        sock.sendall(frame)


def _recv(sock: socket.socket, maxfds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One frame and the descriptors sent with it; (None, []) at EOF. Reads no byte past the frame."""
    fds: list[int] = []

    def exactly(n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            data, more, _flags, _addr = socket.recv_fds(sock, n - len(buf), maxfds)
            fds.extend(more)
            if not data:
                if buf:
                    raise ValueError("truncated frame")
                return None
            buf += data
        return buf

    header = exactly(4)
    if header is None:
        return None, fds
    size = struct.unpack("!I", header)[0]
    if size > _MAX_FRAME:
        raise ValueError("frame too large")
    body = exactly(size)
    if body is None:
        raise ValueError("truncated frame")
    return json.loads(body), fds


# -- the helper (runs as its own interpreter, standard library only) ------------------------------------


class Refused(Exception):
    """The kernel would not give us the namespaces (or no privileges inside them)."""


def bring_up_loopback() -> None:
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0).ljust(_IFREQ_SIZE, b"\0")
        flags = struct.unpack("16sH", fcntl.ioctl(s, _SIOCGIFFLAGS, request)[:18])[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | _IFF_UP).ljust(_IFREQ_SIZE, b"\0"))


def enter_namespaces() -> None:
    """Unshare a user and a network namespace, keep our uid/gid, bring ``lo`` up.

    Raises:
        Refused: any step the kernel refused.
    """
    uid, gid = os.getuid(), os.getgid()
    try:
        os.unshare(os.CLONE_NEWUSER | os.CLONE_NEWNET)
    except OSError as e:
        raise Refused(f"unshare: {e.strerror or e}") from None
    try:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
        bring_up_loopback()
    except OSError as e:
        raise Refused(f"setting up the namespace: {e.strerror or e}") from None


def listen_inside(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def helper_main(fd: int) -> int:
    """The helper: set up, hand the listeners over, exec. Returns only on failure."""
    chan = socket.socket(fileno=fd)
    request, _ = _recv(chan)
    if request is None:
        return 70
    argv: list[str] = request["argv"]
    env: dict[str, str] = request["env"]
    try:
        enter_namespaces()
        listeners = [listen_inside(host, port) for host, port in request["listen"]]
    except Refused as e:
        _send(chan, {"refused": str(e)})
        return HELPER_EXIT_REFUSED
    except OSError as e:
        _send(chan, {"refused": f"binding loopback inside: {e.strerror or e}"})
        return HELPER_EXIT_REFUSED
    _send(chan, {"ready": True}, [s.fileno() for s in listeners])
    for sock in listeners:
        sock.close()
    os.set_inheritable(fd, False)  # the parent sees EOF once exec succeeds
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        _send(chan, {"exec_errno": e.errno, "message": e.strerror or str(e)})
        return 127 if e.errno == errno.ENOENT else 126
    return 70  # not reached


# -- the parent's side (runs in the proxy's event loop) -------------------------------------------------


class Fence:
    """The isolated child (the helper, become the command) and the relays out of its namespace."""

    def __init__(self, proc: Any, servers: list[Any]) -> None:
        self.proc = proc
        self.servers = servers
        self.writers: set[Any] = set()

    async def close(self) -> None:
        """Stop relaying: no new connections, and the open ones are cut (the child is gone)."""
        import asyncio

        for server in self.servers:
            server.close()
        for writer in list(self.writers):
            writer.close()
        for server in self.servers:
            try:  # since Python 3.12 this waits for the relayed connections too: all cut just above
                await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)
            except TimeoutError:
                pass


def supported() -> str | None:
    """Why isolation cannot work here, or None when it can be tried."""
    if not sys.platform.startswith("linux") or not hasattr(os, "unshare"):
        return "--isolate needs Linux (user and network namespaces) and Python 3.12 or newer"
    return None


async def spawn(argv: Sequence[str], env: dict[str, str], forward: Sequence[tuple[str, int]]) -> Fence:
    """Start ``argv`` in a fresh network namespace where ``forward`` (loopback HOST, PORT pairs)
    lead to the same addresses outside. Returns once the command runs (exec succeeded).

    Raises:
        ProxyError: namespaces refused (69, one sentence naming the sysctls), the command not
            found (127) or not executable (126).
    """
    import asyncio

    from proxy.errors import ExitStatus, ProxyError

    why_not = supported()
    if why_not:
        raise ProxyError(why_not, ExitStatus.UNAVAILABLE)
    ours, theirs = socket.socketpair()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-I", str(Path(__file__).resolve()), str(theirs.fileno()),
            pass_fds=(theirs.fileno(),), env=env)
    finally:
        theirs.close()
    fence = Fence(proc, [])
    ours.settimeout(SETUP_TIMEOUT)
    try:
        with ours:
            await asyncio.to_thread(_send, ours, {"argv": list(argv), "env": env, "listen": [list(a) for a in forward]})
            reply, fds = await asyncio.to_thread(_recv, ours, len(forward))
            if reply is None or "ready" not in reply:
                for fd in fds:
                    os.close(fd)
                await proc.wait()
                reason = (reply or {}).get("refused") or f"the helper exited with status {proc.returncode}"
                raise ProxyError(REFUSED_SENTENCE.format(reason=reason), ExitStatus.UNAVAILABLE)
            for fd, target in zip(fds, forward, strict=True):
                listener = socket.socket(fileno=fd)
                fence.servers.append(await asyncio.start_server(_relay(fence, target), sock=listener))
            failure, _ = await asyncio.to_thread(_recv, ours)  # EOF: the exec succeeded
        if failure is not None:
            await proc.wait()
            if failure.get("exec_errno") == errno.ENOENT:
                raise ProxyError(f"cannot run {argv[0]}: command not found", ExitStatus.NOTFOUND)
            raise ProxyError(f"cannot run {argv[0]}: {failure.get('message')}", ExitStatus.NOEXEC)
    except BaseException:
        await fence.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return fence


def _relay(fence: Fence, target: tuple[str, int]) -> Any:
    import asyncio

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fence.writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            fence.writers.discard(writer)
            return
        fence.writers.add(up_writer)
        try:
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
                fence.writers.discard(w)

    return handle


async def _pipe(reader: Any, writer: Any) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()  # half-close, as the peer did
    except OSError:
        writer.close()


if __name__ == "__main__":
    sys.exit(helper_main(int(sys.argv[1])))

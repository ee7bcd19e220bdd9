"""Server and load-generator processes of one benchmark run: started in their own sessions, always stopped.

Every process the run starts is registered here and killed with its whole
process group on the way out: normal end, an exception, Ctrl-C or SIGTERM. Peer
servers fork workers (LitServe, MLServer), so killing the leader alone is not
enough. ``check_loopback`` reads /proc to prove a server and all its children
listen on loopback addresses only.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

LISTEN = "0A"
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


class ServerError(RuntimeError):
    """A server did not start, did not get ready, or listened beyond loopback; the message has its log tail."""


_HANDED_OUT: set[int] = set()
_LOWEST_PORT = 10_000


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now that this process never handed out before, below the kernel's ephemeral
    range when there is room: ``bind(("", 0))`` and every outgoing connection take their ports from that range,
    so a port picked there may be taken again before its server binds it (a second pick here, or a client's
    connection), which failed a test starting eight servers at once with "Address already in use"."""
    low = _ephemeral_low()
    if low - _LOWEST_PORT >= 1_000:
        for _ in range(200):
            port = random.randrange(_LOWEST_PORT, low)
            if port not in _HANDED_OUT and _bindable(port):
                _HANDED_OUT.add(port)
                return port
    while True:  # no free port found below the ephemeral range: the kernel's pick, never the same one twice
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


@functools.cache
def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ManagedProcess:
    """One child in its own session (process group == pid), output to a log file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None,
                 cwd: Path | None = None, capture_stdout: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            argv, stdout=subprocess.PIPE if capture_stdout else self._log, stderr=self._log,
            stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        _REGISTRY.add(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 15) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])

    def wait_ready(self, url: str, timeout: float) -> float:
        """Poll ``url`` until it answers 200; returns seconds taken. Fails fast if the process exits."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise ServerError(f"{self.name} exited with {self.process.returncode} before it was ready:\n"
                                  f"{self.log_tail()}")
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError, OSError), \
                    _DIRECT.open(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
            time.sleep(0.25)
        raise ServerError(f"{self.name} not ready at {url} after {timeout:.0f}s:\n{self.log_tail()}")

    def group_pids(self) -> list[int]:
        """The leader and every process still in its session."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == self.pid:  # field 6 of stat: session id (fields[0] is field 3, the state)
                    pids.append(int(entry.name))
        return pids

    def check_loopback(self) -> list[str]:
        """Addresses the server's processes listen on; ServerError if any is not a loopback address."""
        addresses = listening_addresses(self.group_pids())
        outside = [a for a in addresses if not is_loopback(a.rsplit(":", 1)[0])]
        if outside:
            raise ServerError(f"{self.name} listens beyond loopback on {outside}; refusing to load it")
        return addresses

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the whole group, SIGKILL what is left after ``grace`` seconds."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(grace)
        deadline = time.monotonic() + grace
        while self.group_pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.group_pids():  # only a group that still has our processes in it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()
        _REGISTRY.discard(self)


_REGISTRY: set[ManagedProcess] = set()


def stop_all() -> None:
    """Stop every process this run started and has not stopped yet."""
    for managed in list(_REGISTRY):
        managed.stop(grace=5.0)


@contextlib.contextmanager
def cleanup_on_exit() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into KeyboardInterrupt and stop every child on the way out, however it ends."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        # a second Ctrl-C must not abort the cleanup half-way
        ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            stop_all()
        finally:
            signal.signal(signal.SIGINT, ignored)
            for sig, handler in previous.items():
                signal.signal(sig, handler)


@contextlib.contextmanager
def signals_stay_with_main_thread() -> Iterator[None]:
    """Threads started inside (gRPC's, which outlive their channel) block SIGINT, SIGTERM and SIGHUP, so the
    kernel delivers those to the main thread: one caught by another thread sets Python's flag without
    interrupting the main thread's blocking wait (a load generator's minutes-long ``communicate``), and Ctrl-C
    would go unseen until it returned. A signal that arrives inside is held, and delivered on the way out."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)  # new threads inherit the mask
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def listening_addresses(pids: list[int]) -> list[str]:
    """``host:port`` of every TCP socket in LISTEN state owned by ``pids`` (from /proc/net/tcp{,6})."""
    inodes: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = []
    for table, decode in (("/proc/net/tcp", _ipv4), ("/proc/net/tcp6", _ipv6)):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[3] == LISTEN and cols[9] in inodes:
                    host_hex, port_hex = cols[1].split(":")
                    found.append(f"{decode(host_hex)}:{int(port_hex, 16)}")
    return sorted(set(found))


def _ipv4(hex_address: str) -> str:
    return socket.inet_ntop(socket.AF_INET, bytes.fromhex(hex_address)[::-1])


def _ipv6(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))  # four host-order 32-bit words
    return socket.inet_ntop(socket.AF_INET6, words)


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    return host.startswith("127.") or host == "::1" or host.startswith("::ffff:127.")

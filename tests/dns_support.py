"""A tiny authoritative DNS server on loopback (UDP, A records only) that tests can change while it runs.

gRPC's c-ares resolver reaches it through a target's authority, ``dns://127.0.0.1:PORT/NAME:8001``, so a test
can add or remove a replica's address the way a headless Service's DNS does when pods come and go. Names it
does not know are answered NXDOMAIN; other record types of a known name (AAAA, TXT, SRV) get an empty answer.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterable
from types import TracebackType

A, IN = 1, 1
NOERROR, FORMERR, NXDOMAIN = 0, 1, 3


def parse_question(packet: bytes) -> tuple[int, int, str, int, int]:
    """(id, flags, name, qtype, end of the question) of a query; ValueError when it is not one."""
    if len(packet) < 12:
        raise ValueError("short packet")
    query_id, flags, questions = struct.unpack("!HHH", packet[:6])
    if questions != 1:
        raise ValueError("exactly one question expected")
    labels, offset = [], 12
    while True:
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        labels.append(packet[offset:offset + length].decode("ascii").lower())
        offset += length
    qtype, qclass = struct.unpack("!HH", packet[offset:offset + 4])
    if qclass != IN:
        raise ValueError("class IN expected")
    return query_id, flags, ".".join(labels), qtype, offset + 4


class DnsServer:
    """Serves ``records`` (name -> IPv4 addresses) on 127.0.0.1 until closed; ``set`` changes a name live."""

    def __init__(self, records: dict[str, Iterable[str]] | None = None, ttl: int = 1) -> None:
        self.ttl = ttl
        self._records = {name.lower().rstrip("."): list(ips) for name, ips in (records or {}).items()}
        self._lock = threading.Lock()
        self.queries = 0
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = int(self._sock.getsockname()[1])
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-dns", daemon=True)
        self._thread.start()

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def target(self, name: str, port: int) -> str:
        """The gRPC target that resolves ``name`` through this server."""
        return f"dns://{self.authority}/{name}:{port}"

    def set(self, name: str, ips: Iterable[str]) -> None:
        with self._lock:
            self._records[name.lower().rstrip(".")] = list(ips)

    def _answer(self, packet: bytes) -> bytes:
        try:
            query_id, flags, name, qtype, end = parse_question(packet)
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            return packet[:2] + struct.pack("!HHHHH", 0x8000 | FORMERR, 0, 0, 0, 0) if len(packet) >= 2 else b""
        with self._lock:
            self.queries += 1
            ips = self._records.get(name)
        rcode = NXDOMAIN if ips is None else NOERROR
        answers = [ip for ip in ips or () if qtype == A]
        # QR + AA + the query's RD bit, RA; one question echoed, one A record per address
        header = struct.pack("!HHHHHH", query_id, 0x8480 | (flags & 0x0100) | rcode, 1, len(answers), 0, 0)
        body = b"".join(struct.pack("!HHHIH", 0xC00C, A, IN, self.ttl, 4) + socket.inet_aton(ip) for ip in answers)
        return header + packet[12:end] + body

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                packet, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            reply = self._answer(packet)
            if reply:
                self._sock.sendto(reply, peer)

    def close(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        self._sock.close()

    def __enter__(self) -> DnsServer:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

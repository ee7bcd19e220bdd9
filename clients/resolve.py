"""The addresses behind a gRPC target, as gRPC's own resolvers would find them, for clients that pick a replica
themselves (stream affinity) instead of letting round-robin pick one per call.

``dns:///host:port`` and plain ``host:port`` go through the system resolver; ``dns://SERVER/host:port`` asks
that DNS server directly (A records over UDP, as gRPC's c-ares resolver does with an authority);
``ipv4:a:port,b:port`` and ``ipv6:[a]:port,...`` are lists already.
"""

from __future__ import annotations

import secrets
import socket
import struct

DNS_TIMEOUT_S = 2.0


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``host`` or ``[v6]`` into host and port."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:  # no port, or a bare IPv6 address
        return text, default_port
    return host, int(port)


def endpoint(host: str, port: int) -> str:
    """A ``host:port`` gRPC target of one address (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def resolve(target: str, default_port: int = 443) -> list[str]:
    """Every address ``target`` names, as sorted ``ip:port`` endpoints; empty when the name has none."""
    for scheme in ("ipv4:", "ipv6:"):
        if target.startswith(scheme):
            return sorted({endpoint(*split_host_port(a, default_port)) for a in target[len(scheme):].split(",")})
    authority, name = "", target
    if target.startswith("dns:"):
        rest = target[len("dns:"):]
        if rest.startswith("//"):
            authority, _, name = rest[2:].partition("/")
        else:
            name = rest
    host, port = split_host_port(name, default_port)
    if authority:
        server, server_port = split_host_port(authority, 53)
        addresses = query_a(host, server, server_port)
    else:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror:
            return []
        addresses = [str(info[4][0]) for info in infos]
    return sorted({endpoint(a, port) for a in addresses})


def query_a(name: str, server: str, port: int = 53, timeout: float = DNS_TIMEOUT_S) -> list[str]:
    """The A records of ``name`` from one DNS server (UDP); empty for NXDOMAIN; OSError when it does not answer."""
    query_id = secrets.randbits(16)
    question = b"".join(bytes([len(label)]) + label.encode("ascii") for label in name.rstrip(".").split(".")) + b"\0"
    packet = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0) + question + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(packet, (server, port))
        while True:
            reply = sock.recv(4096)
            if len(reply) >= 12 and struct.unpack("!H", reply[:2])[0] == query_id:
                break
    _, flags, questions, answers = struct.unpack("!HHHH", reply[:8])
    if flags & 0x000F:  # NXDOMAIN, SERVFAIL, ...: no address
        return []
    offset = 12
    for _ in range(questions):
        offset = _skip_name(reply, offset) + 4
    addresses = []
    for _ in range(answers):
        offset = _skip_name(reply, offset)
        kind, _, _, length = struct.unpack("!HHIH", reply[offset:offset + 10])
        offset += 10
        if kind == 1 and length == 4:
            addresses.append(socket.inet_ntoa(reply[offset:offset + 4]))
        offset += length
    return addresses


def _skip_name(packet: bytes, offset: int) -> int:
    """The offset just past a (possibly compressed) name."""
    while True:
        length = packet[offset]
        if length & 0xC0 == 0xC0:
            return offset + 2
        if length == 0:
            return offset + 1
        offset += 1 + length

"""Node addresses: ``HOST:PORT`` strings as configs, gossip and the CLI carry them. Pure."""

from __future__ import annotations


def split_host_port(address: str) -> tuple[str, int]:
    """``"host:port"`` to ``(host, port)``; raises ValueError on anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)

"""Whether a server is there, asked once with a short timeout before a
command relies on it (an MLflow tracking server, a Ray cluster), so that an
address where nothing listens is one sentence within seconds, not minutes of
a client's retries."""

from __future__ import annotations

import socket
import urllib.parse


def unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why no TCP connection opens to `address` ("host:port", or a URL such
    as http://host:port or ray://host:port); None when one does, or when the
    address names no host and port to try (Ray's "auto", a file store)."""
    url = urllib.parse.urlsplit(address if "//" in address else f"//{address}")
    try:
        port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    except ValueError:
        return "its port is not a number from 0 to 65535"
    if not url.hostname or port is None:
        return None
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError as err:
        return str(err) or type(err).__name__
    return None


__all__ = ["unreachable"]

"""Endpoint addresses: ``tcp://host:port``, ``host:port`` and ``unix:///path.sock``.

Clients and servers accept either one ``address`` string or the helpers
``host=``, ``port=``, ``path=`` and ``transport=`` (never both). A server also
accepts a bare port (``"5555"``, bound on 127.0.0.1), and port 0 to let the
system pick one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import sys
from typing import Any

__all__ = ["Address", "DEFAULT_HOST", "resolve_address"]

DEFAULT_HOST = "127.0.0.1"
_TRANSPORTS = ("tcp", "unix")
# The longest path a Unix socket address can hold (sun_path) on Linux.
_MAX_UNIX_PATH = 107


@dataclasses.dataclass(frozen=True)
class Address:
    """A parsed endpoint address.

    Attributes:
        transport: "tcp" or "unix".
        host: the TCP host (None for Unix sockets).
        port: the TCP port (None for Unix sockets).
        path: the Unix socket path (None for TCP).
    """

    transport: str
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.transport == "unix":
            return f"unix://{self.path}"
        host = self.host or DEFAULT_HOST
        if ":" in host:  # IPv6 literal
            host = f"[{host}]"
        return f"tcp://{host}:{self.port}"

    @property
    def sockaddr(self) -> Any:
        """The address in the form ``socket.connect``/``bind`` take."""
        if self.transport == "unix":
            return self.path
        return (self.host or DEFAULT_HOST, self.port)

    @property
    def is_loopback(self) -> bool:
        """True for Unix sockets and TCP on a loopback address or localhost."""
        if self.transport == "unix":
            return True
        host = self.host or DEFAULT_HOST
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False


def _check_port(port: Any) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, got {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be in 0..65535, got {port}")
    return port


def _parse_port(text: str, address: str) -> int:
    if not text.isdigit():
        raise ValueError(f"invalid address {address!r}: port {text!r} is not a number")
    return _check_port(int(text))


def _split_host_port(rest: str, address: str) -> tuple[str, int]:
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0 or not rest[end + 1 :].startswith(":"):
            raise ValueError(f"invalid address {address!r}: expected [ipv6]:port")
        return rest[1:end], _parse_port(rest[end + 2 :], address)
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        raise ValueError(f"invalid address {address!r}: expected host:port")
    if ":" in host:
        raise ValueError(f"invalid address {address!r}: write IPv6 hosts as [host]:port")
    return host, _parse_port(port, address)


def _unix(path: str, address: str) -> Address:
    if sys.platform == "win32":  # pragma: no cover
        raise ValueError("Unix sockets are not available on Windows")
    if not path:
        raise ValueError(f"invalid address {address!r}: empty socket path")
    if "\0" in path:
        raise ValueError(f"invalid address {address!r}: NUL in socket path")
    if len(path.encode()) > _MAX_UNIX_PATH:
        raise ValueError(f"invalid address {address!r}: socket paths are limited to {_MAX_UNIX_PATH} bytes")
    return Address("unix", path=path)


def parse_address(address: str, *, for_bind: bool = False) -> Address:
    """Parse one address string.

    Raises:
        ValueError: the string is empty or not a valid address.
        TypeError: ``address`` is not a string.
    """
    if not isinstance(address, str):
        raise TypeError(f"address must be a str, got {type(address).__name__}")
    text = address.strip()
    if not text:
        raise ValueError("address must not be empty")
    scheme, sep, rest = text.partition("://")
    if sep:
        scheme = scheme.lower()
        if scheme == "unix":
            return _unix(rest, address)
        if scheme not in ("tcp", "http"):
            raise ValueError(
                f"invalid address {address!r}: unknown scheme {scheme!r} (use tcp:// or unix://)"
            )
        host, port = _split_host_port(rest.rstrip("/"), address)
        return Address("tcp", host=host, port=port)
    if text.startswith("/"):
        return _unix(text, address)
    if for_bind and text.isdigit():
        return Address("tcp", host=DEFAULT_HOST, port=_parse_port(text, address))
    host, port = _split_host_port(text, address)
    return Address("tcp", host=host, port=port)


def resolve_address(
    address: str | Address | None = None,
    *,
    host: str | None = None,
    port: int | None = None,
    path: str | None = None,
    transport: str | None = None,
    default: str | None = None,
    for_bind: bool = False,
) -> Address:
    """Turn the address arguments of a client or server into an :class:`Address`.

    Args:
        address: an address string (or an Address).
        host: TCP host (default 127.0.0.1); needs ``port``.
        port: TCP port.
        path: Unix socket path.
        transport: "tcp" or "unix", to select explicitly.
        default: the address to use when nothing is given (None: an error).
        for_bind: accept the forms only a server takes (a bare port).

    Raises:
        ValueError: conflicting or invalid arguments ("address cannot be
            combined with host, port, path, or transport"), a missing port or
            path, an unknown transport.
        TypeError: a port that is not an int.
    """
    helpers = (host, port, path, transport)
    if address is not None:
        if any(h is not None for h in helpers):
            raise ValueError("address cannot be combined with host, port, path, or transport")
        if isinstance(address, Address):
            return address
        return parse_address(address, for_bind=for_bind)
    if transport is not None and transport not in _TRANSPORTS:
        raise ValueError(f"transport must be 'tcp' or 'unix', got {transport!r}")
    if path is not None:
        if host is not None or port is not None:
            raise ValueError("path cannot be combined with host or port")
        if transport == "tcp":
            raise ValueError("transport='tcp' needs host and port, not path")
        return _unix(path, path)
    if host is not None or port is not None:
        if transport == "unix":
            raise ValueError("transport='unix' needs path, not host and port")
        if port is None:
            raise ValueError("port is required with host")
        return Address("tcp", host=host or DEFAULT_HOST, port=_check_port(port))
    if transport is not None:
        raise ValueError(
            f"transport={transport!r} needs {'path' if transport == 'unix' else 'host and port'}"
        )
    if default is None:
        raise ValueError("no address given: pass an address, or host and port, or path")
    return parse_address(default, for_bind=for_bind)

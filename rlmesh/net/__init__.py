"""``rlmesh.net``: the control plane's sockets and frames.

* :mod:`~rlmesh.net.address` — ``tcp://host:port``, ``host:port``, ``unix:///path.sock``;
* :mod:`~rlmesh.net.framing` — length-prefixed frames with an aligned binary tail;
* :mod:`~rlmesh.net.stream` — socket streams and listeners with deadlines.

It never imports :mod:`rlmesh.shm`; only the endpoints know both.
"""

from __future__ import annotations

from .address import Address as Address, parse_address as parse_address, resolve_address as resolve_address
from .listener import Listener as Listener
from .stream import SocketStream as SocketStream, connect as connect

__all__ = ["Address", "Listener", "SocketStream", "connect", "parse_address", "resolve_address"]

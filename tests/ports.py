"""Free TCP ports on loopback for the servers the tests start (Ray, the S3 server)."""
from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports. All sockets stay bound until all ports are chosen: asked
    one at a time, the kernel may hand back a port it just gave (CI once got the same
    port for the dashboard and the metrics exporter, and `ray start` refused)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()

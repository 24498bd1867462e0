"""The render zygote's messages: one JSON object per SOCK_SEQPACKET message, descriptors beside it.

Shared by the job's process (`client`), the zygote (`daemon`) and its render processes
(`worker`); the messages themselves are described in `kiln.render.zygote.daemon`.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

MAX_MESSAGE = 1 << 20  # a job's environment and arguments; far more than any real one


def send(connection: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(connection, [data], fds)
    else:
        connection.send(data)


def receive(connection: socket.socket, max_fds: int = 0) -> tuple[dict[str, Any] | None, list[int]]:
    """One message and any descriptors that came with it; (None, []) when the peer has gone."""
    data, fds, _, _ = socket.recv_fds(connection, MAX_MESSAGE, max_fds)
    if not data:
        for fd in fds:
            os.close(fd)
        return None, []
    message = json.loads(data)
    if not isinstance(message, dict):
        for fd in fds:
            os.close(fd)
        raise ValueError("a zygote message must be a JSON object")
    return message, fds


def socket_peer(connection: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end, as the kernel knows them."""
    data = connection.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid

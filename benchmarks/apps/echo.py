"""The transport floor: raw TCP, no HTTP, no compute, buffers allocated once.

The client sends 16 bytes (request size, answer size, little-endian) and then the request's
bytes; the server reads them into a buffer it keeps and answers with that many bytes. It is
what moving a request's bytes there and the answer's bytes back costs on this machine, at
best. Run: ``python -m benchmarks.apps.echo PORT``.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading

__all__ = ["main", "recv_exactly"]


def recv_exactly(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError
        got += n


def _serve(conn: socket.socket) -> None:
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    inbox, outbox = bytearray(1), bytearray(1)
    head = memoryview(bytearray(16))
    try:
        while True:
            recv_exactly(conn, head)
            size, answer = struct.unpack("<QQ", head)
            if len(inbox) < size:
                inbox = bytearray(size)
            if len(outbox) < answer:
                outbox = bytearray(answer)
            recv_exactly(conn, memoryview(inbox)[:size])
            conn.sendall(memoryview(outbox)[:answer])
    except (EOFError, OSError):
        conn.close()


def main() -> None:
    server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()

"""A response's small writes leave in one send (`protocol._CoalescingTransport`), on a real
asyncio socket transport whose ``write`` calls are recorded."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from lossreg_service.server.protocol import _HOLD_MOST, _CoalescingTransport


async def _connected() -> tuple[Any, list[bytes], socket.socket, socket.socket]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
    sent: list[bytes] = []
    write = transport.write

    def recording(data: bytes) -> None:
        sent.append(bytes(data))
        write(data)

    transport.write = recording  # type: ignore[method-assign]
    return transport, sent, ours, theirs


def _read(sock: socket.socket, size: int) -> bytes:
    sock.settimeout(5)
    data = b""
    while len(data) < size:
        data += sock.recv(size - len(data))
    return data


def test_a_head_and_a_small_body_leave_in_one_send_at_the_end_of_the_step() -> None:
    async def run() -> tuple[list[bytes], list[bytes], bytes]:
        transport, sent, _, theirs = await _connected()
        coalescing = _CoalescingTransport(transport, asyncio.get_running_loop())
        coalescing.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        coalescing.write(memoryview(b"hello"))
        before_step = list(sent)
        await asyncio.sleep(0)  # the loop's next step
        received = await asyncio.get_running_loop().run_in_executor(None, _read, theirs, 43)
        transport.close()
        theirs.close()
        return before_step, sent, received

    before_step, sent, received = asyncio.run(run())
    assert before_step == []
    assert sent == [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"]
    assert received == sent[0]


def test_a_big_write_goes_at_once_after_what_is_held_and_close_sends_what_is_held() -> None:
    big = b"x" * (_HOLD_MOST + 1)

    async def run() -> tuple[list[bytes], bytes, bytes]:
        transport, sent, _, theirs = await _connected()
        coalescing = _CoalescingTransport(transport, asyncio.get_running_loop())
        coalescing.write(b"head;")
        coalescing.write(big)
        coalescing.write(b"tail")
        assert coalescing.get_write_buffer_size() >= 4  # what is held counts as buffered
        coalescing.close()  # before the step ends: the held tail still goes
        loop = asyncio.get_running_loop()  # read off the loop, which sends the rest meanwhile
        received = await loop.run_in_executor(None, _read, theirs, 5 + len(big) + 4)
        end = await loop.run_in_executor(None, theirs.recv, 1)  # closed after the data
        theirs.close()
        return sent, received, end

    sent, received, end = asyncio.run(run())
    assert sent == [b"head;", big, b"tail"]
    assert received == b"head;" + big + b"tail"
    assert end == b""

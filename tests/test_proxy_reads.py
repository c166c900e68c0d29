"""Over TLS the proxy's legs read into one buffer shared by every TLS leg of the proxy
(fixproxy.proxy._ReadsIntoBuffer): each read must reach the inspector as bytes of its own, copied
out before the next read refills the buffer. Plain TCP legs stay plain Protocols (uvloop reads them
into its own buffer). Every socket test runs through these legs; this pins the copy-out itself."""

from __future__ import annotations

import asyncio
from typing import Any

from fixproxy.proxy import AtsLeg, OmsLeg, TlsAtsLeg, TlsOmsLeg


class _Link:
    def __init__(self) -> None:
        self.proxy: Any = type("P", (), {"read_view": memoryview(bytearray(64))})()
        self.oms: Any = None
        self.got: list[tuple[str, Any]] = []

    def from_oms(self, data: Any) -> None:
        self.got.append(("oms", data))

    def from_ats(self, data: Any) -> None:
        self.got.append(("ats", data))


def test_reads_are_copied_out_of_the_one_shared_buffer() -> None:
    link = _Link()
    oms, ats = TlsOmsLeg(link), TlsAtsLeg(link)
    assert link.oms is oms
    # what the TLS layer (uvloop's, as asyncio's) needs to read into the buffer: a BufferedProtocol
    # that is not also an asyncio.Protocol (it would be fed data_received instead)
    for leg in (oms, ats):
        assert isinstance(leg, asyncio.BufferedProtocol) and not isinstance(leg, asyncio.Protocol)
    assert not isinstance(OmsLeg(link), asyncio.BufferedProtocol)  # plain TCP: uvloop's own buffer
    assert not isinstance(AtsLeg(link), asyncio.BufferedProtocol)
    link.oms = oms
    buf = oms.get_buffer(-1)
    assert buf is ats.get_buffer(4096) is link.proxy.read_view  # one buffer, whatever the hint
    buf[:12] = b"8=FIX.4.4\x019="
    oms.buffer_updated(12)
    buf = ats.get_buffer(-1)
    buf[:7] = b"35=0\x01xy"  # overwrites what the OMS read left in the buffer
    ats.buffer_updated(5)
    assert link.got == [("oms", b"8=FIX.4.4\x019="), ("ats", b"35=0\x01")]
    assert all(type(data) is bytes for _, data in link.got)

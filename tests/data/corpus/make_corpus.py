"""Regenerate the FIX codec corpus: ``python tests/data/corpus/make_corpus.py [--check]``.

valid/<version>-<message>.fix
    One real-shaped message per file (FIX 4.2, FIX 4.4, FIXT.1.1 with FIX 5.0SP2), built by
    tests/fixgen.py: it must decode alone and pass `Message.check_syntax`.
broken/<reason>-<what>.fix
    Bytes the codec must refuse, named after the expected reason code (`fixproxy.reasons.Reason`
    value): the decoder's FrameError reason, or `check_syntax()`'s when the frame itself is sound.
    A file may end with a valid Heartbeat where the decoder needs bytes after the broken message
    to see that it is broken (BodyLength too long, CheckSum not three digits).

Files hold raw bytes with SOH (0x01) delimiters, no trailing newline. The output is deterministic;
``--check`` exits 1 if the committed files differ from what this script would write (the test
suite checks the same).
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
for _p in (str(ROOT), str(ROOT / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from fixgen import (  # noqa: E402
    FIX44,
    VERSIONS,
    Builder,
    body_of,
    field_bytes,
    frame,
    heartbeat,
    real_messages,
)

from fixproxy.codec import checksum  # noqa: E402

T = "20240315-13:45:30.123"


def valid() -> dict[str, bytes]:
    out = {}
    for vname, begin in VERSIONS.items():
        for name, raw in real_messages(begin).items():
            out[f"valid/{vname}-{name}.fix"] = raw
    return out


def _hdr(msg_type: str = "D", seq: int = 2) -> list[tuple[object, object]]:
    return [(35, msg_type), (49, "OMS1"), (56, "EXCH"), (34, seq), (52, T)]


def _nos_with(*extra: tuple[object, object]) -> bytes:
    """A FIX 4.4 NewOrderSingle body with `extra` fields inserted before Symbol (55)."""
    return field_bytes([*_hdr(), (11, "ORD-1"), (1, "ACCT-7"), *extra, (55, "AAPL"), (54, 1),
                        (60, T), (38, 100), (40, 2), (44, "150.25"), (59, 0)])


def broken() -> dict[str, bytes]:
    nos = Builder(FIX44, seq=2).new_order_single()
    body = body_of(nos)
    follower = heartbeat(3)
    good_sum = checksum(nos[: nos.rindex(b"\x0110=") + 1])
    b: dict[str, bytes] = {}

    # -- framing ----------------------------------------------------------------------------------
    b["garbled-garbage-before-begin"] = b"GET / HTTP/1.1\r\n\r\n" + nos
    b["garbled-msgtype-not-third"] = frame(FIX44, field_bytes(
        [(49, "OMS1"), (35, "0"), (56, "EXCH"), (34, 2), (52, T)]))
    b["garbled-empty-msgtype"] = frame(FIX44, b"35=" + body[body.index(b"\x01"):])
    b["garbled-bodylength-not-second"] = (
        b"8=FIX.4.4\x0135=0\x019=" + str(len(body)).encode() + b"\x01" + body[5:] + b"10=000\x01")
    b["garbled-begin-string-unterminated"] = b"8=FIX.4.4.4.4.4.4.4.4.4.4.4.4\x019=5\x0135=0\x01"
    b["bad_begin_string-unknown-version"] = frame("FIX.5.0", body)
    b["bad_begin_string-lowercase"] = frame("fix.4.4", body)
    b["bad_body_length-non-numeric"] = frame(FIX44, body, body_length="1x5")
    b["bad_body_length-too-many-digits"] = frame(FIX44, body, body_length=b"%010d" % len(body))
    b["bad_body_length-short"] = frame(FIX44, body, body_length=len(body) - 1)
    b["bad_body_length-long"] = frame(FIX44, body, body_length=len(body) + 5) + follower
    b["bad_body_length-checksum-missing"] = nos[: nos.rindex(b"\x0110=") + 1] + follower
    b["bad_checksum-wrong"] = frame(FIX44, body, check=b"%03d" % ((good_sum + 1) % 256))
    b["bad_checksum-non-numeric"] = frame(FIX44, body, check="A7F")
    b["bad_checksum-two-digits"] = frame(FIX44, body, check=f"{good_sum % 100:02d}") + follower
    b["bad_checksum-four-digits"] = frame(FIX44, body, check=f"0{good_sum:03d}")
    b["oversize-declared-body-length"] = b"8=FIX.4.4\x019=99999999\x0135=D\x01"

    # -- syntax (well framed, right CheckSum) -------------------------------------------------------
    b["bad_tag-zero"] = frame(FIX44, _nos_with((0, "x")))
    b["bad_tag-leading-zero"] = frame(FIX44, _nos_with(("054", 1)))
    b["bad_tag-six-digits"] = frame(FIX44, _nos_with((100000, "x")))
    b["bad_tag-non-numeric"] = frame(FIX44, _nos_with(("5A", "x")))
    b["bad_tag-empty"] = frame(FIX44, _nos_with(("", "x")))
    b["bad_tag-soh-in-text-looks-like-field"] = frame(FIX44, _nos_with((58, "call me\x01x=1")))
    b["empty_value-text"] = frame(FIX44, _nos_with((58, "")))
    b["empty_value-msgseqnum"] = frame(FIX44, field_bytes(
        [(35, "0"), (49, "OMS1"), (56, "EXCH"), (34, ""), (52, T)]))
    b["soh_in_value-text"] = frame(FIX44, _nos_with((58, "hello\x01world")))
    # The same number of '=' as fields: a count-only check split this as 58=a, 100=200.
    b["soh_in_value-equals-in-text"] = frame(FIX44, _nos_with((58, "a=100\x01200")))
    b["bad_data_length-wrong-length"] = frame(FIX44, field_bytes(
        [*_hdr("A", 1), (98, 0), (108, 30), (95, 5), (96, b"ab\x01c=def"), (141, "Y")]))
    b["bad_data_length-length-without-data"] = frame(FIX44, field_bytes(
        [*_hdr("A", 1), (98, 0), (108, 30), (95, 5), (141, "Y")]))
    b["bad_data_length-data-not-next"] = frame(FIX44, field_bytes(
        [*_hdr("A", 1), (98, 0), (95, 3), (108, 30), (96, "a=b")]))
    b["bad_data_length-non-numeric-length"] = frame(FIX44, field_bytes(
        [*_hdr("A", 1), (98, 0), (108, 30), (95, "x"), (96, "a")]))
    b["too_many_fields-1025"] = frame(FIX44, field_bytes(
        [*_hdr("0"), *((20000 + i, "v") for i in range(1020))]))
    b["duplicate_tag-sendercompid"] = frame(FIX44, field_bytes(
        [*_hdr("0"), (49, "OMS2")]))
    b["duplicate_tag-msgseqnum"] = frame(FIX44, field_bytes([*_hdr("0"), (34, 99)]))
    b["duplicate_tag-checksum-in-body"] = frame(FIX44, _nos_with((10, "123")))
    b["duplicate_tag-beginstring-in-body"] = frame(FIX44, _nos_with((8, "FIX.4.2")))
    return {f"broken/{name}.fix": data for name, data in b.items()}


def build() -> dict[str, bytes]:
    """Relative path -> content of every corpus file."""
    return {**valid(), **broken()}


def main(argv: list[str]) -> int:
    files = build()
    existing = {p.relative_to(HERE).as_posix() for sub in ("valid", "broken")
                for p in (HERE / sub).glob("*.fix")}
    if "--check" in argv:
        stale = sorted(p for p, data in files.items()
                       if not (HERE / p).is_file() or (HERE / p).read_bytes() != data)
        extra = sorted(existing - set(files))
        for p in stale:
            print(f"out of date: {p}")
        for p in extra:
            print(f"not generated: {p}")
        return 1 if stale or extra else 0
    for p in existing - set(files):
        (HERE / p).unlink()
    for p, data in files.items():
        (HERE / p).parent.mkdir(exist_ok=True)
        (HERE / p).write_bytes(data)
    print(f"wrote {len(files)} files under {HERE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

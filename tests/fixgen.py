"""Message builders shared by the tests: real-shaped FIX 4.2, 4.4 and FIXT.1.1/5.0SP2 messages.

Everything well formed is built with `fixproxy.codec.encode`, so BodyLength and CheckSum are right
by construction. `frame` builds the envelope around a hand-written body, with BodyLength and
CheckSum overridable: that is how the broken messages are made.

    b = Builder(FIX44, sender="OMS1", target="EXCH")
    raw = b.new_order_single("ORD-1", "AAPL", side="1", qty=100, price="150.25")

Every builder returns raw bytes (SOH-delimited) and advances `Builder.seq`. Content is deterministic
(fixed SendingTime unless given) so that generated corpus files are stable.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fixproxy.codec import SOH, checksum, encode

FIX42 = b"FIX.4.2"
FIX44 = b"FIX.4.4"
FIXT11 = b"FIXT.1.1"

# Corpus/test name of each version -> its BeginString.
VERSIONS: dict[str, bytes] = {"fix42": FIX42, "fix44": FIX44, "fix50sp2": FIXT11}

APPL_VER_ID_FIX50SP2 = "9"  # ApplVerID (1128) / DefaultApplVerID (1137) for FIX 5.0 SP2
FIXED_TIME = "20240315-13:45:30.123"

FieldValue = bytes | str | int
Field = tuple[FieldValue, FieldValue]


def _b(v: FieldValue) -> bytes:
    if isinstance(v, bytes):
        return v
    return str(v).encode()


def field_bytes(fields: Iterable[Field]) -> bytes:
    """``tag=value<SOH>`` for each pair, with no checks at all (for broken bodies too)."""
    return b"".join(_b(t) + b"=" + _b(v) + SOH for t, v in fields)


def frame(begin_string: FieldValue, body: bytes, *, body_length: FieldValue | None = None,
          check: FieldValue | None = None) -> bytes:
    """``8=<begin><SOH>9=<len><SOH><body>10=<sum><SOH>``. `body` starts at 35= and ends with its
    SOH; BodyLength and CheckSum are computed unless given (then used verbatim)."""
    length = _b(body_length) if body_length is not None else str(len(body)).encode()
    msg = b"8=" + _b(begin_string) + b"\x019=" + length + SOH + body
    ck = _b(check) if check is not None else b"%03d" % checksum(msg)
    return msg + b"10=" + ck + SOH


def body_of(raw: bytes) -> bytes:
    """The body (from 35= to the SOH before 10=) of a well-formed message."""
    start = raw.index(b"\x0135=") + 1
    end = raw.rindex(b"\x0110=") + 1
    return raw[start:end]


def parse_fields(raw: bytes) -> list[tuple[bytes, bytes]]:
    """(tag, value) pairs of a message without data fields, header and trailer included
    (independent of the codec: a plain split, for cross-checking)."""
    return [tuple(f.split(b"=", 1)) for f in raw.split(SOH)[:-1]]  # type: ignore[misc]


@dataclass
class Builder:
    """Builds the messages one side of a session sends, with its CompIDs and sequence numbers."""

    begin_string: bytes = FIX44
    sender: str = "OMS1"
    target: str = "EXCH"
    seq: int = 1
    sending_time: str = FIXED_TIME
    # FIXT.1.1 application messages: send ApplVerID (1128) in the header (optional in 5.0SP2).
    appl_ver_id: str | None = None

    @property
    def fixt(self) -> bool:
        return self.begin_string == FIXT11

    @property
    def fix42(self) -> bool:
        return self.begin_string == FIX42

    # -- generic ----------------------------------------------------------------------------------
    def header(self, msg_type: FieldValue, *, seq: int | None = None, poss_dup: bool = False,
               orig_sending_time: str | None = None, application: bool = False) -> list[Field]:
        fields: list[Field] = [(35, msg_type)]
        if application and self.fixt and self.appl_ver_id is not None:
            fields.append((1128, self.appl_ver_id))
        fields += [(49, self.sender), (56, self.target), (34, self.seq if seq is None else seq)]
        if poss_dup:
            fields.append((43, "Y"))
        fields.append((52, self.sending_time))
        if orig_sending_time is not None:
            fields.append((122, orig_sending_time))
        return fields

    def build(self, msg_type: FieldValue, body: Sequence[Field] = (), *, application: bool = False,
              seq: int | None = None, poss_dup: bool = False,
              orig_sending_time: str | None = None) -> bytes:
        """A message with the standard header and `body`; advances `seq` unless `seq` is given."""
        head = self.header(msg_type, seq=seq, poss_dup=poss_dup,
                           orig_sending_time=orig_sending_time, application=application)
        if seq is None:
            self.seq += 1
        return encode(self.begin_string, [*head, *body])

    # -- session messages -------------------------------------------------------------------------
    def logon(self, heart_bt_int: int = 30, *, reset: bool = False,
              raw_data: bytes | None = None, username: str | None = None) -> bytes:
        body: list[Field] = [(98, 0), (108, heart_bt_int)]
        if raw_data is not None:  # RawDataLength/RawData: a data field, may hold SOH
            body += [(95, len(raw_data)), (96, raw_data)]
        if reset:
            body.append((141, "Y"))
        if username is not None and not self.fix42:
            body.append((553, username))
        if self.fixt:
            body.append((1137, APPL_VER_ID_FIX50SP2))
        return self.build("A", body)

    def heartbeat(self, test_req_id: str | None = None) -> bytes:
        return self.build("0", [(112, test_req_id)] if test_req_id is not None else [])

    def test_request(self, test_req_id: str = "TEST-1") -> bytes:
        return self.build("1", [(112, test_req_id)])

    def resend_request(self, begin: int, end: int = 0) -> bytes:
        return self.build("2", [(7, begin), (16, end)])

    def sequence_reset(self, new_seq: int, *, gap_fill: bool = True, seq: int | None = None) -> bytes:
        """SequenceReset; GapFill mode is sent as a possible duplicate in place of `seq`."""
        body: list[Field] = [(123, "Y"), (36, new_seq)] if gap_fill else [(36, new_seq)]
        return self.build("4", body, seq=seq, poss_dup=gap_fill,
                          orig_sending_time=self.sending_time if gap_fill else None)

    def reject(self, ref_seq: int, reason: int = 5, *, ref_tag: int | None = None,
               ref_msg_type: str | None = None, text: str | None = None) -> bytes:
        body: list[Field] = [(45, ref_seq)]
        if ref_tag is not None:
            body.append((371, ref_tag))
        if ref_msg_type is not None:
            body.append((372, ref_msg_type))
        body.append((373, reason))
        if text is not None:
            body.append((58, text))
        return self.build("3", body)

    def logout(self, text: str | None = None) -> bytes:
        return self.build("5", [(58, text)] if text is not None else [])

    # -- application messages ---------------------------------------------------------------------
    def new_order_single(self, cl_ord_id: str = "ORD-1", symbol: str = "AAPL", *, side: str = "1",
                         qty: FieldValue = 100, price: FieldValue | None = "150.25",
                         account: str | None = "ACCT-7", tif: str = "0",
                         parties: Sequence[tuple[str, str, int]] = (),
                         transact_time: str | None = None) -> bytes:
        """NewOrderSingle; a limit order unless `price` is None. `parties`: (PartyID,
        PartyIDSource, PartyRole) for the NoPartyIDs (453) group (FIX 4.3 and later)."""
        body: list[Field] = [(11, cl_ord_id)]
        if account is not None:
            body.append((1, account))
        if parties:
            if self.fix42:
                raise ValueError("FIX 4.2 has no Parties block")
            body.append((453, len(parties)))
            for pid, source, role in parties:
                body += [(448, pid), (447, source), (452, role)]
        if self.fix42:
            body.append((21, 1))  # HandlInst, required in 4.2
        body += [(55, symbol), (54, side), (60, transact_time or self.sending_time), (38, qty),
                 (40, "1" if price is None else "2")]
        if price is not None:
            body.append((44, price))
        body.append((59, tif))
        return self.build("D", body, application=True)

    def order_cancel_request(self, orig_cl_ord_id: str = "ORD-1", cl_ord_id: str = "ORD-2",
                             symbol: str = "AAPL", *, side: str = "1", qty: FieldValue = 100) -> bytes:
        body: list[Field] = [(41, orig_cl_ord_id), (11, cl_ord_id), (55, symbol), (54, side),
                             (60, self.sending_time), (38, qty)]
        return self.build("F", body, application=True)

    def order_cancel_replace_request(self, orig_cl_ord_id: str = "ORD-1", cl_ord_id: str = "ORD-3",
                                     symbol: str = "AAPL", *, side: str = "1", qty: FieldValue = 200,
                                     price: FieldValue = "150.10") -> bytes:
        body: list[Field] = [(41, orig_cl_ord_id), (11, cl_ord_id)]
        if self.fix42:
            body.append((21, 1))
        body += [(55, symbol), (54, side), (60, self.sending_time), (38, qty), (40, "2"),
                 (44, price)]
        return self.build("G", body, application=True)

    def execution_report(self, order_id: str = "EX-1001", exec_id: str = "EXEC-1",
                         cl_ord_id: str = "ORD-1", symbol: str = "AAPL", *, side: str = "1",
                         qty: int = 100, last_qty: int = 40, last_px: str = "150.25",
                         cum_qty: int = 40, avg_px: str = "150.25") -> bytes:
        """A partial fill: ExecType Trade (F) from 4.4 on, PartialFill (1) in 4.2."""
        leaves = qty - cum_qty
        status = "2" if leaves == 0 else "1"
        body: list[Field] = [(37, order_id), (11, cl_ord_id), (17, exec_id)]
        if self.fix42:
            body += [(20, 0), (150, status)]  # ExecTransType New; ExecType mirrors OrdStatus
        else:
            body.append((150, "F"))
        body += [(39, status), (55, symbol), (54, side), (38, qty), (32, last_qty), (31, last_px),
                 (151, leaves), (14, cum_qty), (6, avg_px), (60, self.sending_time)]
        return self.build("8", body, application=True)

    def market_data_snapshot(self, symbol: str = "EUR/USD", md_req_id: str = "MDR-1",
                             entries: Sequence[tuple[str, str, int]] = (
                                 ("0", "1.08412", 1_000_000), ("1", "1.08415", 2_000_000),
                                 ("2", "1.08413", 500_000))) -> bytes:
        """MarketDataSnapshotFullRefresh with a NoMDEntries (268) group of (type, px, size)."""
        body: list[Field] = [(262, md_req_id), (55, symbol)]
        if self.fixt:
            body.append((779, self.sending_time))  # LastUpdateTime, required in 5.0SP2
        body.append((268, len(entries)))
        for kind, px, size in entries:
            body += [(269, kind), (270, px), (271, size)]
        return self.build("W", body, application=True)


def real_messages(begin_string: bytes) -> dict[str, bytes]:
    """One of each real-shaped message this test suite uses, for `begin_string`, in session order
    (name -> raw). Deterministic."""
    b = Builder(begin_string, sender="OMS1", target="EXCH", appl_ver_id=None)
    x = Builder(begin_string, sender="EXCH", target="OMS1")
    out = {
        "logon": b.logon(30, reset=True),
        "heartbeat": b.heartbeat(),
        "test_request": b.test_request("TEST-1"),
        "heartbeat_reply": x.heartbeat("TEST-1"),
        "resend_request": b.resend_request(3, 0),
        "sequence_reset_gapfill": x.sequence_reset(9, seq=5),
        "reject": x.reject(4, 5, ref_tag=54, ref_msg_type="D",
                           text="Value is incorrect (out of range) for this tag"),
        "new_order_single": b.new_order_single("ORD-1", "AAPL", side="1", qty=100, price="150.25"),
        "order_cancel_request": b.order_cancel_request("ORD-1", "ORD-2", "AAPL", qty=100),
        "order_cancel_replace_request": b.order_cancel_replace_request("ORD-1", "ORD-3", "AAPL"),
        "execution_report": x.execution_report("EX-1001", "EXEC-1", "ORD-1", "AAPL"),
        "market_data_snapshot": x.market_data_snapshot(),
        "logout": b.logout("Bye"),
    }
    if begin_string != FIX42:
        out["new_order_single_parties"] = b.new_order_single(
            "ORD-4", "MSFT", side="2", qty=500, price="410.5",
            parties=(("TRADER-9", "D", 11), ("DESK-EQ", "D", 24), ("CLIENT-42", "D", 3)))
    if begin_string == FIX44:
        out["logon_rawdata"] = b.logon(30, raw_data=b"\x01token=abc\x01sig=9f\x01")
    if begin_string == FIXT11:
        out["new_order_single_applverid"] = Builder(
            FIXT11, seq=20, appl_ver_id=APPL_VER_ID_FIX50SP2).new_order_single("ORD-5", "IBM", qty=10)
    return out


def heartbeat(seq: int = 1, begin_string: bytes = FIX44) -> bytes:
    """A small valid message (a Heartbeat), handy as a follower after a broken one."""
    return Builder(begin_string, seq=seq).heartbeat()

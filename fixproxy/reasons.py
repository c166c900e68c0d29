"""Every reason fixproxy can refuse something for: one enum, one place.

The string values are a contract: metrics labels, security events, audit records and dashboards
use them. Never rename a member's value; add new members instead.

Each reason carries its category and, where FIX defines one, the SessionRejectReason (373) a
counterparty's engine expects to see in a session-level Reject.
"""

from __future__ import annotations

from enum import StrEnum


class Category(StrEnum):
    FRAMING = "framing"  # the receiver ignores it (FIX): dropped, recorded, recovered by resend
    SYNTAX = "syntax"  # well framed, but a field is malformed
    DICTIONARY = "dictionary"  # data-dictionary rule broken
    SESSION = "session"  # session-layer rule broken (sequence, CompIDs, logon order, time)
    POLICY = "policy"  # authorisation: message type, rate, leak guard
    AUTH = "auth"  # TLS handshake or logon refused
    TRANSPORT = "transport"  # timeouts, idle, connection limits


# SessionRejectReason (373) values, FIX 4.4 / 5.0 numbering.
SRR_INVALID_TAG = 0
SRR_REQUIRED_TAG_MISSING = 1
SRR_TAG_NOT_DEFINED_FOR_MSGTYPE = 2
SRR_UNDEFINED_TAG = 3
SRR_TAG_WITHOUT_VALUE = 4
SRR_VALUE_OUT_OF_RANGE = 5
SRR_INCORRECT_DATA_FORMAT = 6
SRR_COMPID_PROBLEM = 9
SRR_SENDINGTIME_ACCURACY = 10
SRR_INVALID_MSGTYPE = 11
SRR_TAG_APPEARS_MORE_THAN_ONCE = 13
SRR_TAG_OUT_OF_ORDER = 14
SRR_REPEATING_GROUP_ORDER = 15
SRR_INCORRECT_NUMINGROUP = 16
SRR_OTHER = 99


class Reason(StrEnum):
    """A stable reason code. ``value`` is the string used everywhere outside the code."""

    # -- framing: the message cannot be delimited or its integrity checks fail ----------------------
    GARBLED = "garbled"  # not 8=/9=/35= first, no 10= last, bytes that are not a FIX frame
    BAD_BEGIN_STRING = "bad_begin_string"  # 8= names a version this proxy does not carry
    BAD_BODY_LENGTH = "bad_body_length"  # 9= not a number, too many digits, or 10= not where it says
    BAD_CHECKSUM = "bad_checksum"  # 10= wrong, or not three digits
    OVERSIZE = "oversize"  # declared or actual size above the configured maximum
    # -- syntax: well framed, malformed fields ---------------------------------------------------------
    BAD_TAG = "bad_tag"  # tag not numeric, zero, leading zero, longer than the limit
    EMPTY_VALUE = "empty_value"  # tag= with nothing after it
    SOH_IN_VALUE = "soh_in_value"  # a SOH inside a value that is not a length-prefixed data field
    BAD_DATA_LENGTH = "bad_data_length"  # a data field whose length tag does not match it
    TOO_MANY_FIELDS = "too_many_fields"  # field count above the configured maximum
    DUPLICATE_TAG = "duplicate_tag"  # a tag twice outside a repeating group
    GROUP_COUNT_EXCEEDED = "group_count_exceeded"  # NumInGroup above the configured ceiling
    # -- data dictionary ----------------------------------------------------------------------------
    UNKNOWN_MSGTYPE = "unknown_msgtype"
    UNKNOWN_TAG = "unknown_tag"  # tag not defined in the dictionary (strict mode)
    TAG_NOT_ALLOWED = "tag_not_allowed"  # tag defined, but not for this message type
    MISSING_REQUIRED = "missing_required"
    INVALID_VALUE = "invalid_value"  # not one of the enumerated values
    BAD_VALUE_FORMAT = "bad_value_format"  # not of the field's type (INT, PRICE, UTCTIMESTAMP, ...)
    REPEATING_GROUP_MISMATCH = "repeating_group_mismatch"  # NumInGroup != instances, or bad order
    FIELD_OUT_OF_ORDER = "field_out_of_order"  # header field after the body, trailer field early
    # -- session layer ------------------------------------------------------------------------------
    BEFORE_LOGON = "before_logon"  # anything but Logon first
    COMPID_MISMATCH = "compid_mismatch"  # CompIDs differ from the session's, or changed mid-session
    SEQNUM_TOO_LOW = "seqnum_too_low"  # MsgSeqNum below expected without PossDupFlag=Y
    STALE_SENDING_TIME = "stale_sending_time"  # SendingTime too far from the proxy's clock
    # -- policy -------------------------------------------------------------------------------------
    MSGTYPE_NOT_ALLOWED = "msgtype_not_allowed"
    RATE_LIMITED = "rate_limited"
    FLOOD = "flood"  # past the disconnect threshold of the rate limit
    LEAK_CROSS_SESSION_REF = "leak_cross_session_ref"  # names an order another session owns
    LEAK_BLOCKED_DELIVERY = "leak_blocked_delivery"  # order data about to reach a non-owner
    SPOOFING = "spoofing"  # OnBehalfOf / CompID spoofing
    AUDIT_UNAVAILABLE = "audit_unavailable"  # fail closed: the audit trail cannot record
    # -- authentication -----------------------------------------------------------------------------
    TLS_NO_CERT = "tls_no_cert"
    TLS_UNKNOWN_CA = "tls_unknown_ca"
    TLS_EXPIRED = "tls_expired"
    TLS_REVOKED = "tls_revoked"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    TLS_PROTOCOL_VERSION = "tls_protocol_version"  # a TLS version below the configured minimum (1.0, 1.1)
    TLS_PLAINTEXT = "tls_plaintext"  # bytes that are not TLS at all on the TLS port (plain FIX, HTTP, a probe)
    COMPID_NOT_BOUND = "compid_not_bound"  # Logon CompIDs not bound to the client certificate
    UNKNOWN_SESSION = "unknown_session"
    BAD_CREDENTIALS = "bad_credentials"
    SOURCE_NOT_ALLOWED = "source_not_allowed"
    SOURCE_BLOCKED = "source_blocked"
    # -- transport ----------------------------------------------------------------------------------
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    LOGON_TIMEOUT = "logon_timeout"
    IDLE_TIMEOUT = "idle_timeout"
    TOO_MANY_CONNECTIONS = "too_many_connections"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    SLOW_READER = "slow_reader"

    @property
    def category(self) -> Category:
        return _CATEGORY[self]

    @property
    def session_reject_reason(self) -> int:
        """The SessionRejectReason (373) sent in a session Reject for this reason."""
        return _SRR.get(self, SRR_OTHER)

    def __str__(self) -> str:  # so f"{reason}" is the stable code
        return self.value


_C = Category
_CATEGORY: dict[Reason, Category] = {}
for _r, _cat in (
    ((Reason.GARBLED, Reason.BAD_BEGIN_STRING, Reason.BAD_BODY_LENGTH, Reason.BAD_CHECKSUM,
      Reason.OVERSIZE), _C.FRAMING),
    ((Reason.BAD_TAG, Reason.EMPTY_VALUE, Reason.SOH_IN_VALUE, Reason.BAD_DATA_LENGTH,
      Reason.TOO_MANY_FIELDS, Reason.DUPLICATE_TAG, Reason.GROUP_COUNT_EXCEEDED), _C.SYNTAX),
    ((Reason.UNKNOWN_MSGTYPE, Reason.UNKNOWN_TAG, Reason.TAG_NOT_ALLOWED, Reason.MISSING_REQUIRED,
      Reason.INVALID_VALUE, Reason.BAD_VALUE_FORMAT, Reason.REPEATING_GROUP_MISMATCH,
      Reason.FIELD_OUT_OF_ORDER), _C.DICTIONARY),
    ((Reason.BEFORE_LOGON, Reason.COMPID_MISMATCH, Reason.SEQNUM_TOO_LOW,
      Reason.STALE_SENDING_TIME), _C.SESSION),
    ((Reason.MSGTYPE_NOT_ALLOWED, Reason.RATE_LIMITED, Reason.FLOOD, Reason.LEAK_CROSS_SESSION_REF,
      Reason.LEAK_BLOCKED_DELIVERY, Reason.SPOOFING, Reason.AUDIT_UNAVAILABLE), _C.POLICY),
    ((Reason.TLS_NO_CERT, Reason.TLS_UNKNOWN_CA, Reason.TLS_EXPIRED, Reason.TLS_REVOKED,
      Reason.TLS_HANDSHAKE_FAILED, Reason.TLS_PROTOCOL_VERSION, Reason.TLS_PLAINTEXT,
      Reason.COMPID_NOT_BOUND, Reason.UNKNOWN_SESSION,
      Reason.BAD_CREDENTIALS, Reason.SOURCE_NOT_ALLOWED, Reason.SOURCE_BLOCKED), _C.AUTH),
    ((Reason.HANDSHAKE_TIMEOUT, Reason.LOGON_TIMEOUT, Reason.IDLE_TIMEOUT,
      Reason.TOO_MANY_CONNECTIONS, Reason.UPSTREAM_UNAVAILABLE, Reason.SLOW_READER), _C.TRANSPORT),
):
    for _m in _r:
        _CATEGORY[_m] = _cat
assert set(_CATEGORY) == set(Reason), set(Reason) - set(_CATEGORY)

_SRR: dict[Reason, int] = {
    Reason.BAD_TAG: SRR_INVALID_TAG,
    Reason.EMPTY_VALUE: SRR_TAG_WITHOUT_VALUE,
    Reason.SOH_IN_VALUE: SRR_INCORRECT_DATA_FORMAT,
    Reason.BAD_DATA_LENGTH: SRR_INCORRECT_DATA_FORMAT,
    Reason.DUPLICATE_TAG: SRR_TAG_APPEARS_MORE_THAN_ONCE,
    Reason.GROUP_COUNT_EXCEEDED: SRR_INCORRECT_NUMINGROUP,
    Reason.UNKNOWN_MSGTYPE: SRR_INVALID_MSGTYPE,
    Reason.UNKNOWN_TAG: SRR_INVALID_TAG,
    Reason.TAG_NOT_ALLOWED: SRR_TAG_NOT_DEFINED_FOR_MSGTYPE,
    Reason.MISSING_REQUIRED: SRR_REQUIRED_TAG_MISSING,
    Reason.INVALID_VALUE: SRR_VALUE_OUT_OF_RANGE,
    Reason.BAD_VALUE_FORMAT: SRR_INCORRECT_DATA_FORMAT,
    Reason.REPEATING_GROUP_MISMATCH: SRR_INCORRECT_NUMINGROUP,
    Reason.FIELD_OUT_OF_ORDER: SRR_TAG_OUT_OF_ORDER,
    Reason.COMPID_MISMATCH: SRR_COMPID_PROBLEM,
    Reason.STALE_SENDING_TIME: SRR_SENDINGTIME_ACCURACY,
    Reason.MSGTYPE_NOT_ALLOWED: SRR_INVALID_MSGTYPE,
}


class Refusal:
    """Why a message (or connection) is refused: the reason code, a Text (58) for the counterparty,
    and the tag at fault (RefTagID 371) when there is one."""

    __slots__ = ("reason", "tag", "text")

    def __init__(self, reason: Reason, text: str, tag: int | None = None) -> None:
        self.reason = reason
        self.text = text
        self.tag = tag

    def __repr__(self) -> str:
        return f"Refusal({self.reason.value}, {self.text!r}, tag={self.tag})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Refusal) and self.reason is other.reason and self.text == other.text
                and self.tag == other.tag)

    __hash__ = None  # type: ignore[assignment]

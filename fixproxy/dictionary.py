"""Data-dictionary validation against QuickFIX-format XML dictionaries (specs/*.xml).

The XML is compiled once, at load time, into flat tables keyed by the tag as ``bytes``: for every
message type one dict ``tag -> (section, check, arg)`` holding the header, trailer and body fields
of that message (components flattened in), its repeating groups (each with its own member dict),
and the members of those groups marked as "only valid inside their group". Validating a field is
then one dict lookup, a set insertion for the duplicate check, and at most one C-level check of its
value (``bytes.isdigit``, a frozenset lookup, or a compiled regex for the time types).

``fields`` handed to :meth:`DataDictionary.validate` is the message's (tag, value) pairs in order,
from (b"35", msgtype) to the last field before CheckSum; BeginString, BodyLength and CheckSum have
been checked by the framer and are not in it (if one does turn up inside the message it is refused
as out of order: that is how a second message smuggled inside a first one looks).

The first violation in field order is reported; missing required fields are reported after the
scan. See specs/README.md for where the dictionaries come from and how to add custom fields.

Fast path: once a message passes, the plan of its tag sequence is kept (per message type and mode,
at most ``max_plans``): which value check applies at which position, and the NumInGroup values
seen. A later message with the same tag sequence only has its values checked against the plan;
whatever fails there goes through the full scan, which alone decides and words refusals, so the
verdict is the same either way. Order entry traffic repeats a few tag sequences, so most messages
take the fast path (about half the cost of the full scan).

QuickFIX 1.16 checks less than this module in a few places (values inside repeating groups, nested
and header group counts, LOCALMKTDATE/MONTHYEAR formats, required header fields of FIXT
application messages): tests/test_dictionary.py lists them and checks everything else against it.
"""

from __future__ import annotations

import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from itertools import chain
from operator import itemgetter
from pathlib import Path

from fixproxy.codec import Message, _speedups
from fixproxy.reasons import Reason, Refusal

__all__ = ["DEFAULT_MAX_GROUP_COUNT", "MODES", "DataDictionary", "load_for_version"]

DEFAULT_MAX_GROUP_COUNT = 1000
DEFAULT_MAX_PLANS = 256
MODES = ("strict", "lenient", "off")

# -- sections: where in the message a field belongs ----------------------------------------------
_HEADER = 0
_BODY = 1
_TRAILER = 2
_STRAY = 3  # a group member outside its group
_MISPLACED = 4  # 8, 9 or 10 inside the message: the framer consumed the real ones

# -- value checks ----------------------------------------------------------------------------------
_C_NONE = 0  # STRING, DATA, CURRENCY, ...: any value
_C_ENUM = 1  # arg: frozenset of allowed values
_C_UINT = 2  # arg: largest allowed value, as digits (bytes); unsigned integer
_C_INT = 3  # signed 32-bit integer
_C_FLOAT = 4  # optional '-', digits with at most one '.'
_C_FUNC = 5  # arg: callable(bytes) -> bool
_C_MULTI = 6  # arg: frozenset; every space-separated token must be in it
_C_GROUP = 7  # arg: _Group; the value is the NumInGroup
_C_COUNT = 8  # fast-path plans only: arg is the NumInGroup value the plan was made with

_first = itemgetter(0)
_INT32_MAX = b"2147483647"
_UINT64_MAX = b"18446744073709551615"

_D2 = rb"(?:0[1-9]|[12][0-9]|3[01])"
_M2 = rb"(?:0[1-9]|1[0-2])"
_HMS = rb"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)"
_FRAC = rb"(?:\.[0-9]{1,9})?"
_RE_TIMESTAMP = re.compile(rb"[0-9]{4}" + _M2 + _D2 + b"-" + _HMS + _FRAC)
_RE_TIMEONLY = re.compile(_HMS + _FRAC)
_RE_DATE = re.compile(rb"[0-9]{4}" + _M2 + _D2)
_RE_MONTHYEAR = re.compile(rb"[0-9]{4}" + _M2 + rb"(?:" + _D2 + rb"|w[1-5])?")
_RE_DAYOFMONTH = re.compile(rb"0?[1-9]|[12][0-9]|3[01]")
_is_timestamp = _RE_TIMESTAMP.fullmatch  # one object: the C plan checks recognise it by identity


def _fits(val: bytes, max_digits: bytes) -> bool:
    """An all-digit ``val`` is not above ``max_digits`` (no int() on attacker-sized input)."""
    if len(val) < len(max_digits):
        return True
    val = val.lstrip(b"0")
    return len(val) < len(max_digits) or (len(val) == len(max_digits) and val <= max_digits)


def _is_char(val: bytes) -> bool:
    return len(val) == 1


def _is_boolean(val: bytes) -> bool:
    return val == b"Y" or val == b"N"


_TYPE_CHECKS: dict[str, tuple[int, object]] = {
    "INT": (_C_INT, None),
    "LENGTH": (_C_UINT, _INT32_MAX),
    "NUMINGROUP": (_C_UINT, _INT32_MAX),
    "TAGNUM": (_C_UINT, _INT32_MAX),
    "SEQNUM": (_C_UINT, _UINT64_MAX),
    "DAYOFMONTH": (_C_FUNC, _RE_DAYOFMONTH.fullmatch),
    "FLOAT": (_C_FLOAT, None),
    "QTY": (_C_FLOAT, None),
    "PRICE": (_C_FLOAT, None),
    "PRICEOFFSET": (_C_FLOAT, None),
    "AMT": (_C_FLOAT, None),
    "PERCENTAGE": (_C_FLOAT, None),
    "CHAR": (_C_FUNC, _is_char),
    "BOOLEAN": (_C_FUNC, _is_boolean),
    "UTCTIMESTAMP": (_C_FUNC, _is_timestamp),
    "TIME": (_C_FUNC, _is_timestamp),  # FIX 4.0/4.1 name of UTCTIMESTAMP
    "UTCTIMEONLY": (_C_FUNC, _RE_TIMEONLY.fullmatch),
    "UTCDATEONLY": (_C_FUNC, _RE_DATE.fullmatch),
    "UTCDATE": (_C_FUNC, _RE_DATE.fullmatch),
    "LOCALMKTDATE": (_C_FUNC, _RE_DATE.fullmatch),
    "MONTHYEAR": (_C_FUNC, _RE_MONTHYEAR.fullmatch),
}
_MULTI_TYPES = frozenset({"MULTIPLEVALUESTRING", "MULTIPLECHARVALUE", "MULTIPLESTRINGVALUE"})


def _format_ok(code: int, arg, val: bytes) -> bool:
    """The value is of the field's type (enumerations aside)."""
    if code == _C_NONE:
        return True
    if code == _C_UINT:
        return val.isdigit() and _fits(val, arg)
    if code == _C_INT:
        if val[:1] == b"-":
            return val[1:].isdigit() and _fits(val[1:], b"2147483648")
        return val.isdigit() and _fits(val, _INT32_MAX)
    if code == _C_FLOAT:
        digits = val[1:] if val[:1] == b"-" else val
        return digits.replace(b".", b"", 1).isdigit()
    if code == _C_FUNC:
        return bool(arg(val))
    raise AssertionError(code)  # pragma: no cover


class _Field:
    """One <fields> entry: everything the slow (error) path needs."""

    __slots__ = ("check", "enums", "fmt", "name", "number", "type")

    def __init__(self, number: int, name: str, ftype: str, enums: frozenset[bytes] | None) -> None:
        self.number = number
        self.name = name
        self.type = ftype
        self.enums = enums
        self.fmt: tuple[int, object] = _TYPE_CHECKS.get(ftype, (_C_NONE, None))
        if enums is not None:
            self.check: tuple[int, object] = (_C_MULTI if ftype in _MULTI_TYPES else _C_ENUM, enums)
        else:
            self.check = self.fmt


class _Group:
    """A repeating group as used in one message type."""

    __slots__ = ("count_tag", "delim", "members", "name", "required", "required_order")

    def __init__(
        self, count_tag: bytes, name: str, delim: bytes, members: dict[bytes, tuple], required_order: tuple[bytes, ...]
    ) -> None:
        self.count_tag = count_tag
        self.name = name
        self.delim = delim
        self.members = members  # tag -> (section, check, arg), like a message's lookup
        self.required_order = required_order
        self.required = frozenset(required_order)


class _Message:
    """One message type, compiled."""

    __slots__ = ("admin", "known", "lookup", "msg_type", "name", "plans", "required", "required_order")

    def __init__(
        self,
        msg_type: bytes,
        name: str,
        admin: bool,
        lookup: dict[bytes, tuple],
        required_order: tuple[bytes, ...],
        known: dict[bytes, _Field],
    ) -> None:
        self.msg_type = msg_type
        self.name = name
        self.admin = admin
        self.lookup = lookup
        self.required_order = required_order
        self.required = frozenset(required_order)
        self.known = known  # every tag the dictionary defines (strict mode's UNKNOWN_TAG)
        # validate()'s fast path, per mode (index 0 strict, 1 lenient): the tag sequence, joined by
        # "=" -> (field count, the value checks left to do as (field index, check code, argument))
        self.plans: tuple[dict[bytes, tuple], dict[bytes, tuple]] = ({}, {})


# -- XML compilation -------------------------------------------------------------------------------


class _Items:
    """The flattened content of a message, component or group: ordered fields and groups."""

    __slots__ = ("fields", "groups", "required")

    def __init__(self) -> None:
        self.fields: list[bytes] = []  # every tag at this level, in dictionary order (incl. group counts)
        self.groups: dict[bytes, _Group] = {}
        self.required: list[bytes] = []


class _Source:
    """One parsed XML file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        root = ET.parse(path).getroot()
        if root.tag != "fix":
            raise ValueError(f"{path}: root element is <{root.tag}>, expected <fix>")
        self.root = root
        self.type = root.get("type", "FIX")
        self.major = root.get("major", "")
        self.minor = root.get("minor", "")
        self.version = f"{self.type}.{self.major}.{self.minor}"
        self.fields: dict[bytes, _Field] = {}
        self.by_name: dict[str, _Field] = {}
        fields_el = root.find("fields")
        if fields_el is None:
            raise ValueError(f"{path}: no <fields> section")
        for el in fields_el.iterfind("field"):
            name = el.get("name", "")
            number_text = el.get("number", "")
            if not name or not number_text.isdigit() or int(number_text) <= 0:
                raise ValueError(f"{path}: <field> without a valid number and name: {ET.tostring(el)[:80]!r}")
            number = int(number_text)
            values = [v.get("enum", "") for v in el.iterfind("value")]
            enums = frozenset(v.encode("latin-1") for v in values) if values else None
            if name in self.by_name:
                raise ValueError(f"{path}: field {name} defined twice")
            tag = str(number).encode()
            if tag in self.fields:
                raise ValueError(f"{path}: field number {number} defined twice")
            f = _Field(number, name, el.get("type", "STRING"), enums)
            self.fields[tag] = f
            self.by_name[name] = f
        self.components = {c.get("name"): c for c in root.iterfind("components/component")}
        self._component_cache: dict[tuple[str, bool], _Items] = {}
        self._group_cache: dict[int, _Group] = {}

    def tag_of(self, name: str | None) -> bytes:
        f = self.by_name.get(name or "")
        if f is None:
            raise ValueError(f"{self.path}: {name!r} is not defined in <fields>")
        return str(f.number).encode()

    def flatten(self, element: ET.Element, required: bool, stack: tuple[str, ...] = ()) -> _Items:
        """Flatten ``element``'s children, components inlined. ``required``: the element and every
        enclosing component are required, so the required fields found here are required."""
        out = _Items()
        for child in element:
            req = child.get("required", "N") in ("Y", "y")
            if child.tag == "field" or child.tag == "group":
                tag = self.tag_of(child.get("name"))
                out.fields.append(tag)
                if req and required:
                    out.required.append(tag)
                if child.tag == "group":
                    out.groups[tag] = self.group(child, stack)
            elif child.tag == "component":
                sub = self.component(child.get("name", ""), required and req, stack)
                out.fields += sub.fields
                out.required += sub.required
                out.groups.update(sub.groups)
        return out

    def component(self, name: str, required: bool, stack: tuple[str, ...]) -> _Items:
        key = (name, required)
        items = self._component_cache.get(key)
        if items is None:
            element = self.components.get(name)
            if element is None:
                raise ValueError(f"{self.path}: component {name!r} not found")
            if name in stack:
                raise ValueError(f"{self.path}: component {name!r} contains itself")
            items = self._component_cache[key] = self.flatten(element, required, (*stack, name))
        return items

    def group(self, element: ET.Element, stack: tuple[str, ...]) -> _Group:
        """A <group> element, compiled once however many messages use it. The required fields of a
        group are required in each of its instances, whether or not the group itself is required."""
        g = self._group_cache.get(id(element))
        if g is None:
            tag = self.tag_of(element.get("name"))
            items = self.flatten(element, True, stack)
            if not items.fields:
                raise ValueError(f"{self.path}: group {element.get('name')} has no fields")
            members: dict[bytes, tuple] = {}
            for t in items.fields:
                if t not in members:
                    members[t] = _entry(_BODY, self.fields.get(t), items.groups.get(t))
            g = _Group(tag, element.get("name", ""), items.fields[0], members, tuple(dict.fromkeys(items.required)))
            self._group_cache[id(element)] = g
        return g


def _entry(section: int, f: _Field | None, group: _Group | None = None) -> tuple:
    """A lookup entry: (section, check code, check argument)."""
    if group is not None:
        return (section, _C_GROUP, group)
    if f is None:
        return (section, _C_NONE, None)
    return (section, f.check[0], f.check[1])


def _member_tags(g: _Group, out: list[bytes]) -> list[bytes]:
    """Every tag of ``g``'s members, nested groups included."""
    for tag, (_sec, code, arg) in g.members.items():
        out.append(tag)
        if code == _C_GROUP:
            _member_tags(arg, out)
    return out


def _value_ok(code: int, arg, val: bytes) -> bool:
    if code == _C_ENUM:
        return val in arg
    if code == _C_MULTI:
        return arg.issuperset(val.split(b" "))
    if code == _C_GROUP:
        return val.isdigit()
    return _format_ok(code, arg, val)


def _int_tag(tag: bytes) -> int | None:
    return int(tag) if tag.isdigit() and len(tag) <= 9 else None


def _show(msg_type: bytes) -> str:
    """MsgType as text for Text (58): only when it is short and plainly printable."""
    if 0 < len(msg_type) <= 4 and msg_type.isalnum():
        return msg_type.decode("ascii")
    return "(unprintable)"


def _plan_passes(checks: tuple, values: list[bytes]) -> bool:
    """A cached plan's value checks, in field order: True when every value passes (the tags were
    already proven by the plan's key). False sends the message to the full scan, which alone
    decides and words the refusal."""
    for i, code, arg in checks:
        val = values[i]
        if code == _C_ENUM:
            if val not in arg:
                return False
        elif code == _C_FUNC:
            if not arg(val):
                return False
        elif code == _C_FLOAT:
            if not val.replace(b".", b"", 1).isdigit() and not (
                val[:1] == b"-" and val[1:].replace(b".", b"", 1).isdigit()
            ):
                return False
        elif code == _C_UINT:
            if not val.isdigit() or (len(val) >= len(arg) and not _fits(val, arg)):
                return False
        elif code == _C_COUNT:
            if val != arg:
                return False
        elif not _value_ok(code, arg, val):
            return False
    return True


_py_plan_passes = _plan_passes
if _speedups is not None:  # the same checks in C (fixproxy/_speedups.c); the Python above is the reference
    # These FUNC checks are recognised by identity and done in C; _value_ok decides the other codes
    # (same verdicts: tests/test_speedups.py).
    _speedups.set_checks(_is_timestamp, _is_char, _is_boolean, _value_ok)
    _plan_passes = _speedups.plan_passes


class DataDictionary:
    """A compiled FIX data dictionary: one XML, or a FIXT transport XML plus an application XML."""

    def __init__(self, *, max_group_count: int = DEFAULT_MAX_GROUP_COUNT) -> None:
        self.begin_string: bytes = b""
        self._max_group_count = max_group_count
        self.max_plans = DEFAULT_MAX_PLANS  # fast-path plans kept per message type and mode
        self.paths: tuple[Path, ...] = ()
        self._messages: dict[bytes, _Message] = {}
        self._names: dict[bytes, str] = {}

    @property
    def max_group_count(self) -> int:
        """NumInGroup ceiling: above it, GROUP_COUNT_EXCEEDED."""
        return self._max_group_count

    @max_group_count.setter
    def max_group_count(self, value: int) -> None:
        self._max_group_count = value
        for m in self._messages.values():  # plans were made under the old ceiling
            for plans in m.plans:
                plans.clear()

    def __repr__(self) -> str:
        return f"DataDictionary({self.begin_string.decode()}, {len(self._messages)} message types)"

    # -- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, *paths: str | Path, max_group_count: int = DEFAULT_MAX_GROUP_COUNT) -> DataDictionary:
        """``load("FIX44.xml")``, or ``load("FIXT11.xml", "FIX50SP2.xml")``: transport, then application.

        With two files the header, trailer and admin messages come from the first and the
        application messages from the second."""
        if not 1 <= len(paths) <= 2:
            raise TypeError("load() takes one dictionary, or a transport and an application dictionary")
        sources = [_Source(Path(p)) for p in paths]
        transport, app = sources[0], sources[-1]
        header = transport.root.find("header")
        if header is None or not len(header) or transport.root.find("trailer") is None:
            raise ValueError(
                f"{transport.path}: no <header>/<trailer> fields; a FIX 5 application "
                "dictionary is loaded after its FIXT transport dictionary"
            )
        dd = cls(max_group_count=max_group_count)
        dd.paths = tuple(s.path for s in sources)
        dd.begin_string = transport.version.encode()
        dd._compile(transport, app)
        return dd

    def _compile(self, transport: _Source, app: _Source) -> None:
        t_fields = transport.fields
        header = transport.flatten(transport.root.find("header"), True)  # type: ignore[arg-type]
        trailer = transport.flatten(transport.root.find("trailer"), True)  # type: ignore[arg-type]
        header_required = tuple(t for t in header.required if t not in (b"8", b"9"))
        trailer_required = tuple(t for t in trailer.required if t != b"10")

        # Shared by every message type: header and trailer fields; 8, 9 and 10 are misplaced (the
        # framer consumed the real ones), and header/trailer group members outside their group.
        base: dict[bytes, tuple] = {}
        for tag in trailer.fields:
            base[tag] = _entry(_TRAILER, t_fields.get(tag), trailer.groups.get(tag))
        for tag in header.fields:
            base[tag] = _entry(_HEADER, t_fields.get(tag), header.groups.get(tag))
        for tag in (b"8", b"9", b"10"):
            base[tag] = (_MISPLACED, _C_NONE, None)
        base_strays: list[bytes] = []
        for g in (*header.groups.values(), *trailer.groups.values()):
            _member_tags(g, base_strays)

        all_known = dict(app.fields)
        all_known.update(t_fields)
        self._names = {tag: f.name for tag, f in all_known.items()}

        sources = [transport] if transport is app else [transport, app]
        for src in sources:
            known = t_fields if src is transport else all_known
            for m in src.root.iterfind("messages/message"):
                msg_type = m.get("msgtype", "").encode()
                if not msg_type:
                    raise ValueError(f"{src.path}: <message> without msgtype")
                if msg_type in self._messages:
                    if src is transport:
                        raise ValueError(f"{src.path}: msgtype {msg_type!r} defined twice")
                    continue  # defined by the transport dictionary: it wins
                items = src.flatten(m, True)
                lookup = dict(base)
                for tag in items.fields:
                    if tag not in lookup:  # a header/trailer tag stays one (as QuickFIX does)
                        lookup[tag] = _entry(_BODY, src.fields.get(tag), items.groups.get(tag))
                strays = list(base_strays)
                for g in items.groups.values():
                    _member_tags(g, strays)
                for tag in strays:
                    if tag not in lookup:
                        lookup[tag] = (_STRAY, _C_NONE, None)
                required = header_required + tuple(items.required) + trailer_required
                self._messages[msg_type] = _Message(
                    msg_type,
                    m.get("name", ""),
                    m.get("msgcat", "app") == "admin",
                    lookup,
                    tuple(dict.fromkeys(required)),
                    known,
                )

    # -- queries ------------------------------------------------------------------------------------

    def is_admin(self, msg_type: bytes) -> bool:
        """The message type is a session-level (msgcat="admin") message."""
        m = self._messages.get(msg_type)
        return m is not None and m.admin

    def knows_msgtype(self, msg_type: bytes) -> bool:
        return msg_type in self._messages

    def msg_types(self) -> list[bytes]:
        return list(self._messages)

    def message_name(self, msg_type: bytes) -> str | None:
        m = self._messages.get(msg_type)
        return m.name if m is not None else None

    def field_name(self, tag: bytes | int) -> str | None:
        return self._names.get(tag if isinstance(tag, bytes) else str(tag).encode())

    # -- validation ---------------------------------------------------------------------------------

    def validate_split(self, msg_type: bytes, tags: list[bytes], values: list[bytes], key: bytes | None, *,
                       mode: str = "strict") -> Refusal | None:
        """`validate` for a message the codec has split: tags and values as parallel lists and,
        when the codec computed it, `key` = the tags joined by "=" (the plan-cache key). Saves
        building (tag, value) pairs and the key again on the hot path; same verdicts."""
        if key is not None and mode != "off":
            spec = self._messages.get(msg_type)
            if spec is not None and self.max_plans > 0:
                plan = spec.plans[mode == "lenient"].get(key)
                if plan is not None and plan[0] == len(values) and _plan_passes(plan[1], values):
                    return None
        return self.validate(msg_type, list(zip(tags, values, strict=True)), mode=mode)

    def validator(self, mode: str) -> Callable[[Message], Refusal | None]:
        """The per-message check the session inspector calls (after `Message.check_syntax`)."""
        validate_split = self.validate_split
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        if mode == "off":
            return lambda msg: None
        lenient = mode == "lenient"
        spec_of = self._messages.get

        def check(msg: Message) -> Refusal | None:
            # validate_split's fast path, inlined (it runs for every message): the plan of this
            # exact tag sequence, then its value checks. Anything else: validate_split decides.
            key = msg._key
            values = msg._values
            if key is not None and values is not None and self.max_plans > 0:
                spec = spec_of(msg.msg_type)
                if spec is not None:
                    plan = spec.plans[lenient].get(key)
                    if plan is not None and plan[0] == len(values) and _plan_passes(plan[1], values):
                        return None
            return validate_split(msg.msg_type, msg.tags, msg.values, msg.tag_key, mode=mode)

        return check

    def validate(self, msg_type: bytes, fields: list[tuple[bytes, bytes]], *, mode: str = "strict") -> Refusal | None:
        """None if the message obeys the dictionary, else the first violation in field order
        (missing required fields are reported after the scan).

        ``mode``: "strict" (every rule), "lenient" (tags the dictionary does not define at all are
        let through anywhere; a defined tag that does not belong to the message type is still
        refused), "off" (no checks)."""
        if mode != "strict":
            if mode == "off":
                return None
            if mode != "lenient":
                raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
            lenient = True
        else:
            lenient = False
        spec = self._messages.get(msg_type)
        if spec is None:
            return Refusal(Reason.UNKNOWN_MSGTYPE, f"Invalid MsgType: {_show(msg_type)}", 35)
        if not fields or self.max_plans <= 0:
            return self._scan(spec, fields, lenient, [])
        # Fast path: this exact tag sequence (and these NumInGroup values) passed before, so only the
        # values are left to check. Anything amiss: the full scan finds and reports it.
        # The key: the tags joined by "=" (one hash rather than one per tag). Plans are only made for
        # messages with no "=" in a tag, so with the field count checked, a hit is the same tag sequence.
        tags = b"=".join(map(_first, fields))
        plans = spec.plans[lenient]
        plan = plans.get(tags)
        if plan is not None and plan[0] == len(fields) and _plan_passes(plan[1], [v for _, v in fields]):
            return None
        recorded: list[tuple | None] = []
        refusal = self._scan(spec, fields, lenient, recorded)
        if refusal is None and len(recorded) == len(fields) and tags.count(b"=") == len(fields) - 1:
            if len(plans) >= self.max_plans:
                plans.clear()  # bounded memory; worst case is the full scan
            plans[tags] = (
                len(fields),
                tuple(
                    (i, _C_COUNT, fields[i][1]) if e[1] == _C_GROUP else (i, e[1], e[2])
                    for i, e in enumerate(recorded)
                    if e is not None and e[1]
                ),
            )
        return refusal

    def _scan(
        self, spec: _Message, fields: list[tuple[bytes, bytes]], lenient: bool, rec: list[tuple | None]
    ) -> Refusal | None:
        """Every rule, field by field. Appends each field's lookup entry to ``rec`` (None for an
        unknown tag let through), in field order, for the fast path's plan."""
        get = spec.lookup.get
        seen: set[bytes] = set()
        add = seen.add
        record = rec.append
        section = _HEADER
        it: Iterator[tuple[bytes, bytes]] = iter(fields)
        while True:
            for tag, val in it:
                e = get(tag)
                if e is None:
                    if lenient and tag not in spec.known:
                        if tag in seen:
                            return self._duplicate(tag)
                        add(tag)
                        record(None)
                        continue
                    return self._undefined(spec, tag)
                sec, code, arg = e
                if sec != section:
                    if sec > _TRAILER:
                        return self._misplaced(tag, sec)
                    if sec < section:
                        return self._out_of_order(tag, sec)
                    section = sec
                if tag in seen:
                    return self._duplicate(tag)
                add(tag)
                record(e)
                if code:
                    if code == _C_ENUM:
                        if val not in arg:
                            return self._bad_value(spec, tag, val)
                    elif code == _C_FUNC:
                        if not arg(val):
                            return self._bad_value(spec, tag, val)
                    elif code == _C_FLOAT:
                        if not val.replace(b".", b"", 1).isdigit() and not (
                            val[:1] == b"-" and val[1:].replace(b".", b"", 1).isdigit()
                        ):
                            return self._bad_value(spec, tag, val)
                    elif code == _C_UINT:
                        if not val.isdigit() or (len(val) >= len(arg) and not _fits(val, arg)):
                            return self._bad_value(spec, tag, val)
                    elif code == _C_GROUP:
                        refusal, pending = self._group(spec, arg, tag, val, it, lenient, record)
                        if refusal is not None:
                            return refusal
                        if pending is not None:
                            # resume with the field that ended the group (one chain per top-level
                            # group: bounded, as a group's NumInGroup may appear only once)
                            it = chain((pending,), it)
                            break
                    elif not _value_ok(code, arg, val):
                        return self._bad_value(spec, tag, val)
            else:
                break
        if not spec.required <= seen:
            for tag in spec.required_order:
                if tag not in seen:
                    return Refusal(Reason.MISSING_REQUIRED, f"Required tag missing: {self._label(tag)}", _int_tag(tag))
        return None

    def _group(
        self,
        spec: _Message,
        g: _Group,
        count_tag: bytes,
        count: bytes,
        it: Iterator[tuple[bytes, bytes]],
        lenient: bool,
        record: Callable[[tuple | None], None],
    ) -> tuple[Refusal | None, tuple[bytes, bytes] | None]:
        """Scan the instances of group ``g`` from ``it``. Returns (refusal, None) or (None, the
        field after the group, or None at the end of the message)."""
        if not count.isdigit():  # a sign is no more acceptable in NumInGroup than in FIX 4.2's INT ones
            return Refusal(
                Reason.BAD_VALUE_FORMAT,
                f"Incorrect data format for value: {self._label(count_tag)} (NUMINGROUP)",
                _int_tag(count_tag),
            ), None
        if len(count) > 9 or int(count) > self.max_group_count:
            return Refusal(
                Reason.GROUP_COUNT_EXCEEDED,
                f"NumInGroup above the limit of {self.max_group_count}: {self._label(count_tag)}",
                _int_tag(count_tag),
            ), None
        declared = int(count)
        member = g.members.get
        delim = g.delim
        known = spec.known
        found = 0
        instance: set[bytes] | None = None
        for tag, val in it:
            while True:  # once per field; again for the field that ended a nested group
                if tag == delim:
                    if instance is not None and not g.required <= instance:
                        return self._group_missing(g, instance, found), None
                    found += 1
                    if found > declared:
                        return self._count_mismatch(g, declared, f"more than {declared}"), None
                    instance = {tag}
                    e = member(tag)
                else:
                    e = member(tag)
                    if e is None:
                        if lenient and instance is not None and tag not in known:
                            if tag in instance:
                                return self._duplicate(tag, g), None
                            instance.add(tag)
                            record(None)
                            break
                        if tag not in spec.lookup and not (lenient and tag not in known):
                            return self._undefined(spec, tag), None  # blame the tag, not the count
                        return self._group_end(g, instance, found, declared, (tag, val))  # not a member
                    if instance is None:
                        return Refusal(
                            Reason.REPEATING_GROUP_MISMATCH,
                            f"Repeating group {self._label(g.count_tag)} does not start with its "
                            f"delimiter {self._label(delim)}",
                            _int_tag(tag),
                        ), None
                    if tag in instance:
                        return self._duplicate(tag, g), None
                    instance.add(tag)
                record(e)
                _sec, code, arg = e
                if code:
                    if code == _C_ENUM:
                        if val not in arg:
                            return self._bad_value(spec, tag, val), None
                    elif code == _C_FUNC:
                        if not arg(val):
                            return self._bad_value(spec, tag, val), None
                    elif code == _C_FLOAT:
                        if not val.replace(b".", b"", 1).isdigit() and not (
                            val[:1] == b"-" and val[1:].replace(b".", b"", 1).isdigit()
                        ):
                            return self._bad_value(spec, tag, val), None
                    elif code == _C_GROUP:
                        refusal, nested_pending = self._group(spec, arg, tag, val, it, lenient, record)
                        if refusal is not None:
                            return refusal, None
                        if nested_pending is None:  # the message ended inside the nested group
                            return self._group_end(g, instance, found, declared, None)
                        tag, val = nested_pending
                        continue  # the field that ended the nested group: ours, or the end of ours
                    elif not _value_ok(code, arg, val):
                        return self._bad_value(spec, tag, val), None
                break
        return self._group_end(g, instance, found, declared, None)

    def _group_end(
        self, g: _Group, instance: set[bytes] | None, found: int, declared: int, pending: tuple[bytes, bytes] | None
    ) -> tuple[Refusal | None, tuple[bytes, bytes] | None]:
        if instance is not None and not g.required <= instance:
            return self._group_missing(g, instance, found), None
        if found != declared:
            return self._count_mismatch(g, declared, str(found)), None
        return None, pending

    # -- refusals (the slow path) -------------------------------------------------------------------

    def _label(self, tag: bytes) -> str:
        name = self._names.get(tag)
        shown = tag.decode("ascii", "replace")[:12]
        return f"{shown} ({name})" if name else shown

    def _undefined(self, spec: _Message, tag: bytes) -> Refusal:
        if tag in spec.known:
            return Refusal(
                Reason.TAG_NOT_ALLOWED, f"Tag not defined for this message type: {self._label(tag)}", _int_tag(tag)
            )
        return Refusal(Reason.UNKNOWN_TAG, f"Invalid tag number: {self._label(tag)}", _int_tag(tag))

    def _misplaced(self, tag: bytes, sec: int) -> Refusal:
        if sec == _STRAY:
            return Refusal(
                Reason.REPEATING_GROUP_MISMATCH,
                f"Repeating group member outside its group: {self._label(tag)}",
                _int_tag(tag),
            )
        return Refusal(
            Reason.FIELD_OUT_OF_ORDER, f"Tag specified out of required order: {self._label(tag)}", _int_tag(tag)
        )

    def _out_of_order(self, tag: bytes, sec: int) -> Refusal:
        where = "header field after the body" if sec == _HEADER else "body field after the trailer"
        return Refusal(
            Reason.FIELD_OUT_OF_ORDER,
            f"Tag specified out of required order: {self._label(tag)} ({where})",
            _int_tag(tag),
        )

    def _duplicate(self, tag: bytes, g: _Group | None = None) -> Refusal:
        where = f" in one instance of group {self._label(g.count_tag)}" if g is not None else ""
        return Refusal(Reason.DUPLICATE_TAG, f"Tag appears more than once{where}: {self._label(tag)}", _int_tag(tag))

    def _bad_value(self, spec: _Message, tag: bytes, val: bytes) -> Refusal:
        f = spec.known.get(tag)
        if f is None or not _format_ok(f.fmt[0], f.fmt[1], val):
            return Refusal(
                Reason.BAD_VALUE_FORMAT,
                f"Incorrect data format for value: {self._label(tag)}" + (f" ({f.type})" if f is not None else ""),
                _int_tag(tag),
            )
        return Refusal(
            Reason.INVALID_VALUE, f"Value is incorrect (out of range) for this tag: {self._label(tag)}", _int_tag(tag)
        )

    def _group_missing(self, g: _Group, instance: set[bytes], n: int) -> Refusal:
        tag = next(t for t in g.required_order if t not in instance)
        return Refusal(
            Reason.MISSING_REQUIRED,
            f"Required tag missing: {self._label(tag)} in instance {n} of group {self._label(g.count_tag)}",
            _int_tag(tag),
        )

    def _count_mismatch(self, g: _Group, declared: int, found: str) -> Refusal:
        return Refusal(
            Reason.REPEATING_GROUP_MISMATCH,
            f"Incorrect NumInGroup count for repeating group: {self._label(g.count_tag)} "
            f"is {declared}, instances found: {found}",
            _int_tag(g.count_tag),
        )


# -- one dictionary per FIX version, loaded once ---------------------------------------------------

DEFAULT_SPECS_DIR = Path(__file__).resolve().parent.parent / "specs"

_cache: dict[tuple[bytes, Path], DataDictionary] = {}
_cache_lock = threading.Lock()


def _files_for(begin_string: bytes) -> tuple[str, ...]:
    if begin_string == b"FIXT.1.1":
        return ("FIXT11.xml", "FIX50SP2.xml")
    if (
        begin_string.startswith(b"FIX.")
        and len(begin_string) == 7
        and begin_string[4:5].isdigit()
        and begin_string[5:6] == b"."
        and begin_string[6:7].isdigit()
    ):
        return (f"FIX{begin_string[4:5].decode()}{begin_string[6:7].decode()}.xml",)
    raise ValueError(f"no data dictionary for BeginString {begin_string!r}")


def load_for_version(begin_string: bytes, specs_dir: Path | None = None) -> DataDictionary:
    """The dictionary for a BeginString, loaded once per (version, directory) and shared:
    b"FIX.4.2" -> FIX42.xml, b"FIX.4.4" -> FIX44.xml, b"FIXT.1.1" -> FIXT11.xml + FIX50SP2.xml."""
    directory = (Path(specs_dir) if specs_dir is not None else DEFAULT_SPECS_DIR).resolve()
    key = (bytes(begin_string), directory)
    dd = _cache.get(key)
    if dd is None:
        files = _files_for(key[0])
        paths = [directory / name for name in files]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"no data dictionary for BeginString {begin_string!r}: {', '.join(missing)} missing")
        with _cache_lock:
            dd = _cache.get(key)
            if dd is None:
                dd = _cache[key] = DataDictionary.load(*paths)
    return dd

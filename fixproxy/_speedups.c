/*
 * fixproxy._speedups: the per-message hot path of the codec and the dictionary, in C.
 *
 * Optional. fixproxy/codec.py and fixproxy/dictionary.py are the reference implementation and are
 * used when this module is not built (or FIXPROXY_PURE=1). This file only takes the COMMON case
 * faster, and hands everything else back to Python unchanged:
 *
 *   scan()         frames consecutive well-formed messages (the same checks as Decoder.feed, in
 *                  the same order) and, for a message whose fields pass the fast syntax check,
 *                  splits them once: tags, values and the tag key (the tag -> value index is
 *                  built in Python when something asks for it). It stops at the first byte it
 *                  is not sure about and returns that position: the Python decoder then
 *                  handles it (need more bytes, or a framing error with its reason).
 *                  A message that frames fine but whose fields need the careful path (a data field,
 *                  8/9/10 in the body, a repeated header tag, a bad tag...) is returned unsplit, and
 *                  Message.check_syntax decides about it exactly as without this module.
 *   plan_passes()  dictionary.py's _plan_passes: a cached plan's value checks.
 *   session_fast() session.py's header checks (CompIDs, MsgSeqNum, PossDup, MsgType allowed,
 *                  SendingTime) when they pass with nothing else to do; any other case goes to
 *                  the inspector's Python path.
 *   audit_rows()   audit.py's rows of a messages record, with each message's digest (only when
 *                  built against OpenSSL's libcrypto: SHA-256 with the CPU's SHA extensions). The
 *                  common row (forwarded, a plain MsgType, MsgSeqNum as digits) is rendered here;
 *                  any other row by audit.py's own function, passed in.
 *
 * Differential tests (tests/test_speedups.py) run both implementations on the same inputs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

#define SOH 0x01
#define MAX_CACHED_TAG 100000 /* tags of at most 5 digits: one shared bytes object each */

static PyObject *tag_cache[MAX_CACHED_TAG];

/* Slot offsets of fixproxy.codec.Message, read from its member descriptors at configure(). */
enum {
    S_RAW, S_BEGIN, S_MT, S_BODY, S_TRAILER, S_TAGS, S_VALUES, S_FIELDS, S_INDEX, S_KEY, S_CHECKED,
    N_SLOTS
};
static const char *slot_names[N_SLOTS] = {
    "raw", "begin_string", "msg_type", "body_start", "trailer_start", "_tags", "_values", "_fields",
    "_index", "_key", "_checked_with",
};
static Py_ssize_t slot_offset[N_SLOTS];
static PyTypeObject *message_type = NULL;

/* Tags that make the fast split hand over to Python: data-length fields (their data field may hold
 * SOH), and the envelope tags 8/9/10, which must not appear in the body. */
static unsigned char careful_tag[MAX_CACHED_TAG];
/* Header tags that must not repeat: index into a bit mask, 0 = not single. */
static unsigned char single_tag[MAX_CACHED_TAG];

static PyObject *
get_tag(long t, const char *s, Py_ssize_t len)
{
    PyObject *o = tag_cache[t];
    if (o == NULL) {
        o = PyBytes_FromStringAndSize(s, len);
        if (o == NULL)
            return NULL;
        (void)PyObject_Hash(o); /* cached in the object from now on */
        tag_cache[t] = o;
    }
    Py_INCREF(o);
    return o;
}

static void
set_slot(PyObject *obj, int slot, PyObject *value) /* steals value */
{
    PyObject **p = (PyObject **)((char *)obj + slot_offset[slot]);
    PyObject *old = *p;
    *p = value;
    Py_XDECREF(old);
}

/* configure(message_cls, careful_tags, single_tags) */
static PyObject *
configure(PyObject *self, PyObject *args)
{
    PyObject *cls, *careful, *single;
    if (!PyArg_ParseTuple(args, "O!OO", &PyType_Type, &cls, &careful, &single))
        return NULL;
    for (int i = 0; i < N_SLOTS; i++) {
        PyObject *d = PyObject_GetAttrString(cls, slot_names[i]);
        if (d == NULL)
            return NULL;
        if (Py_TYPE(d) != &PyMemberDescr_Type) {
            Py_DECREF(d);
            PyErr_Format(PyExc_TypeError, "Message.%s is not a slot", slot_names[i]);
            return NULL;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX) {
            Py_DECREF(d);
            PyErr_Format(PyExc_TypeError, "Message.%s is not an object slot", slot_names[i]);
            return NULL;
        }
        slot_offset[i] = m->offset;
        Py_DECREF(d);
    }
    memset(careful_tag, 0, sizeof careful_tag);
    memset(single_tag, 0, sizeof single_tag);
    PyObject *it = PyObject_GetIter(careful);
    if (it == NULL)
        return NULL;
    PyObject *item;
    while ((item = PyIter_Next(it)) != NULL) {
        long t = PyLong_AsLong(item);
        Py_DECREF(item);
        if (t > 0 && t < MAX_CACHED_TAG)
            careful_tag[t] = 1;
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    it = PyObject_GetIter(single);
    if (it == NULL)
        return NULL;
    int bit = 0;
    while ((item = PyIter_Next(it)) != NULL) {
        long t = PyLong_AsLong(item);
        Py_DECREF(item);
        if (++bit > 63) {
            Py_DECREF(it);
            PyErr_SetString(PyExc_ValueError, "at most 63 single tags");
            return NULL;
        }
        if (t > 0 && t < MAX_CACHED_TAG)
            single_tag[t] = (unsigned char)bit;
    }
    Py_DECREF(it);
    if (PyErr_Occurred())
        return NULL;
    Py_XDECREF(message_type);
    Py_INCREF(cls);
    message_type = (PyTypeObject *)cls;
    Py_RETURN_NONE;
}

/* Split the body [b, e) (from "35=" to the SOH before "10=", inclusive). On success sets tags,
 * values and key on msg (the tag -> value index is built when asked for: the session's common path
 * reads its fields with session_fast) and returns 1; returns 0 when the careful path must decide (nothing
 * set), -1 on a Python error. */
static int
split_fields(PyObject *msg, const char *b, const char *e, Py_ssize_t max_fields, Py_ssize_t max_tag_digits)
{
    Py_ssize_t nfields = 0;
    for (const char *p = b; p < e; p++)
        nfields += (*p == SOH);
    if (nfields > max_fields || nfields == 0 || e[-1] != SOH)
        return 0;
    struct { long tag; const char *ts; int tl; const char *vs; Py_ssize_t vl; } stackf[128], *f = stackf;
    if (nfields > 128) {
        f = PyMem_Malloc(sizeof(*f) * (size_t)nfields);
        if (f == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    int result = 0;
    unsigned long long seen_single = 0;
    Py_ssize_t keylen = 0;
    const char *p = b;
    for (Py_ssize_t i = 0; i < nfields; i++) {
        const char *ts = p;
        long tag = 0;
        if (*p < '1' || *p > '9')
            goto done;
        while (p < e && *p >= '0' && *p <= '9') {
            tag = tag * 10 + (*p - '0');
            p++;
            if (p - ts > 5)
                goto done;
        }
        if (p >= e || *p != '=' || p - ts > max_tag_digits)
            goto done;
        int tl = (int)(p - ts);
        if (careful_tag[tag])
            goto done;
        unsigned char bit = single_tag[tag];
        if (bit) {
            unsigned long long m = 1ULL << bit;
            if (seen_single & m)
                goto done;
            seen_single |= m;
        }
        const char *vs = ++p;
        const char *soh = memchr(p, SOH, (size_t)(e - p));
        if (soh == NULL || soh == vs) /* soh is never NULL (e[-1] is SOH); empty value */
            goto done;
        f[i].tag = tag;
        f[i].ts = ts;
        f[i].tl = tl;
        f[i].vs = vs;
        f[i].vl = soh - vs;
        keylen += tl + 1;
        p = soh + 1;
    }
    if (p != e)
        goto done;
    {
        PyObject *tags = PyList_New(nfields), *values = PyList_New(nfields);
        PyObject *key = PyBytes_FromStringAndSize(NULL, keylen - 1);
        if (tags == NULL || values == NULL || key == NULL)
            goto fail;
        char *k = PyBytes_AS_STRING(key);
        for (Py_ssize_t i = 0; i < nfields; i++) {
            PyObject *t = get_tag(f[i].tag, f[i].ts, f[i].tl);
            if (t == NULL)
                goto fail;
            PyList_SET_ITEM(tags, i, t);
            PyObject *v = PyBytes_FromStringAndSize(f[i].vs, f[i].vl);
            if (v == NULL)
                goto fail;
            PyList_SET_ITEM(values, i, v);
            if (i)
                *k++ = '=';
            memcpy(k, f[i].ts, (size_t)f[i].tl);
            k += f[i].tl;
        }
        /* Lists of bytes cannot be part of a reference cycle: the garbage collector need not
         * walk them (the audit trail keeps forwarded messages until its next flush). */
        PyObject_GC_UnTrack(tags);
        PyObject_GC_UnTrack(values);
        set_slot(msg, S_TAGS, tags);
        set_slot(msg, S_VALUES, values);
        set_slot(msg, S_KEY, key);
        result = 1;
        goto done;
    fail:
        Py_XDECREF(tags);
        Py_XDECREF(values);
        Py_XDECREF(key);
        result = -1;
    }
done:
    if (f != stackf)
        PyMem_Free(f);
    return result;
}

static PyObject *
new_message(PyObject *buf, Py_ssize_t pos, Py_ssize_t end, PyObject *begin, Py_ssize_t body_start,
            Py_ssize_t mt_end, Py_ssize_t body_end)
{
    const char *s = PyBytes_AS_STRING(buf);
    PyObject *msg = message_type->tp_alloc(message_type, 0);
    if (msg == NULL)
        return NULL;
    PyObject *raw = PyBytes_FromStringAndSize(s + pos, end - pos);
    PyObject *mt = PyBytes_FromStringAndSize(s + body_start + 3, mt_end - body_start - 3);
    PyObject *bs = PyLong_FromSsize_t(body_start - pos);
    PyObject *ts = PyLong_FromSsize_t(body_end - pos);
    if (raw == NULL || mt == NULL || bs == NULL || ts == NULL) {
        Py_XDECREF(raw);
        Py_XDECREF(mt);
        Py_XDECREF(bs);
        Py_XDECREF(ts);
        Py_DECREF(msg);
        return NULL;
    }
    Py_INCREF(begin);
    set_slot(msg, S_RAW, raw);
    set_slot(msg, S_BEGIN, begin);
    set_slot(msg, S_MT, mt);
    set_slot(msg, S_BODY, bs);
    set_slot(msg, S_TRAILER, ts);
    for (int i = S_TAGS; i <= S_CHECKED; i++) {
        Py_INCREF(Py_None);
        set_slot(msg, i, Py_None);
    }
    /* Nor can a Message (bytes, ints, lists of bytes, a dict of bytes, Limits): untracked, the
     * collector's walks skip the messages a read or the audit trail holds. */
    PyObject_GC_UnTrack(msg);
    return msg;
}

static inline unsigned
sum_bytes(const unsigned char *p, Py_ssize_t n)
{
    unsigned long long total = 0;
    Py_ssize_t i = 0;
    for (; i + 8 <= n; i += 8) {
        unsigned long long w;
        memcpy(&w, p + i, 8);
        /* add the 8 bytes pairwise: bytes to 16-bit lanes, lanes to one sum */
        w = (w & 0x00FF00FF00FF00FFULL) + ((w >> 8) & 0x00FF00FF00FF00FFULL);
        w = (w & 0x0000FFFF0000FFFFULL) + ((w >> 16) & 0x0000FFFF0000FFFFULL);
        total += (w & 0xFFFFFFFFULL) + (w >> 32);
    }
    for (; i < n; i++)
        total += p[i];
    return (unsigned)(total & 0xFF);
}

/* scan(buf, pos, prefix, begin, max_size, max_digits, max_fields, max_tag_digits, limits, out)
 *   -> the position where Python must take over (== len(buf) when everything was consumed).
 * Appends Messages to `out`. `limits` is stored on each split message (check_syntax compares it). */
static PyObject *
scan(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError, "scan() takes 10 arguments");
        return NULL;
    }
    PyObject *buf = args[0], *prefix = args[2], *begin = args[3], *limits = args[8], *out = args[9];
    if (!PyBytes_CheckExact(buf) || !PyBytes_CheckExact(prefix) || !PyList_CheckExact(out)) {
        PyErr_SetString(PyExc_TypeError, "scan(): bytes buffer and prefix, list out");
        return NULL;
    }
    if (message_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "scan(): configure() first");
        return NULL;
    }
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_size = PyLong_AsSsize_t(args[4]);
    Py_ssize_t max_digits = PyLong_AsSsize_t(args[5]);
    Py_ssize_t max_fields = PyLong_AsSsize_t(args[6]);
    Py_ssize_t max_tag_digits = PyLong_AsSsize_t(args[7]);
    if (PyErr_Occurred())
        return NULL;
    const char *s = PyBytes_AS_STRING(buf);
    Py_ssize_t n = PyBytes_GET_SIZE(buf);
    const char *pre = PyBytes_AS_STRING(prefix);
    Py_ssize_t plen = PyBytes_GET_SIZE(prefix);
    if (max_digits > 18)
        max_digits = 18;
    while (pos < n) {
        if (n - pos < plen || memcmp(s + pos, pre, (size_t)plen) != 0)
            break;
        Py_ssize_t p9 = pos + plen - 2; /* "9=" */
        Py_ssize_t lim = p9 + 3 + max_digits;
        if (lim > n)
            lim = n;
        const char *soh2p = (p9 + 2 < lim) ? memchr(s + p9 + 2, SOH, (size_t)(lim - p9 - 2)) : NULL;
        if (soh2p == NULL)
            break;
        Py_ssize_t soh2 = soh2p - s;
        if (soh2 == p9 + 2)
            break; /* empty BodyLength */
        long long length = 0;
        int ok = 1;
        for (Py_ssize_t i = p9 + 2; i < soh2; i++) {
            char c = s[i];
            if (c < '0' || c > '9') {
                ok = 0;
                break;
            }
            length = length * 10 + (c - '0');
        }
        if (!ok)
            break;
        Py_ssize_t body_start = soh2 + 1;
        Py_ssize_t body_end = body_start + (Py_ssize_t)length;
        Py_ssize_t end = body_end + 7;
        if (end - pos > max_size)
            break;
        if (n - body_start < 3 || memcmp(s + body_start, "35=", 3) != 0)
            break;
        if (end > n)
            break;
        if (memcmp(s + body_end - 1, "\x01" "10=", 4) != 0)
            break;
        if (s[end - 1] != SOH)
            break;
        unsigned cs = sum_bytes((const unsigned char *)s + pos, body_end - pos);
        const char *d = s + body_end + 3;
        if (d[0] != '0' + (char)(cs / 100) || d[1] != '0' + (char)(cs / 10 % 10) || d[2] != '0' + (char)(cs % 10))
            break;
        const char *mtp = memchr(s + body_start + 3, SOH, (size_t)(body_end - body_start - 3));
        if (mtp == NULL || mtp == s + body_start + 3)
            break;
        PyObject *msg = new_message(buf, pos, end, begin, body_start, mtp - s, body_end);
        if (msg == NULL)
            return NULL;
        int r = split_fields(msg, s + body_start, s + body_end, max_fields, max_tag_digits);
        if (r < 0) {
            Py_DECREF(msg);
            return NULL;
        }
        if (r) {
            Py_INCREF(limits);
            set_slot(msg, S_CHECKED, limits);
        }
        if (PyList_Append(out, msg) < 0) {
            Py_DECREF(msg);
            return NULL;
        }
        Py_DECREF(msg);
        pos = end;
    }
    return PyLong_FromSsize_t(pos);
}

/* ---------------------------------------------------------------- dictionary plan checks */

enum { C_NONE = 0, C_ENUM = 1, C_UINT = 2, C_INT = 3, C_FLOAT = 4, C_FUNC = 5, C_MULTI = 6, C_GROUP = 7, C_COUNT = 8 };

static int
is_digits(const char *p, Py_ssize_t n)
{
    if (n == 0)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (p[i] < '0' || p[i] > '9')
            return 0;
    return 1;
}

/* The value of n digits (checked by is_digits; n <= 18 cannot overflow). */
static long long
digits_value(const char *p, Py_ssize_t n)
{
    long long v = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        v = v * 10 + (p[i] - '0');
    return v;
}

/* Python: val.replace(b".", b"", 1).isdigit() or (val[:1] == b"-" and the same on val[1:]) */
static int
float_ok(const char *p, Py_ssize_t n)
{
    if (n > 0 && p[0] == '-') {
        p++;
        n--;
    }
    int dots = 0, digits = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p[i] == '.') {
            if (++dots > 1)
                return 0;
        } else if (p[i] >= '0' && p[i] <= '9') {
            digits++;
        } else {
            return 0;
        }
    }
    return digits > 0;
}

/* _fits(val, max_digits) for an all-digit val */
static int
uint_fits(const char *p, Py_ssize_t n, const char *m, Py_ssize_t mn)
{
    if (n < mn)
        return 1;
    while (n > 0 && *p == '0') {
        p++;
        n--;
    }
    return n < mn || (n == mn && memcmp(p, m, (size_t)n) <= 0);
}

/* The dictionary's most frequent FUNC checks, recognised by identity (set_checks) and done here. */
static PyObject *fn_timestamp = NULL, *fn_char = NULL, *fn_boolean = NULL;
static PyObject *fn_fallback = NULL; /* dictionary._value_ok(code, arg, val): every other code */

static int
two_digits(const char *p, int lo, int hi)
{
    if (p[0] < '0' || p[0] > '9' || p[1] < '0' || p[1] > '9')
        return 0;
    int v = (p[0] - '0') * 10 + (p[1] - '0');
    return v >= lo && v <= hi;
}

/* dictionary._RE_TIMESTAMP: YYYYMMDD-HH:MM:SS[.f{1,9}], month 01-12, day 01-31, hour 00-23,
 * minute 00-59, second 00-60 */
static int
timestamp_ok(const char *p, Py_ssize_t n)
{
    if (n < 17 || n == 18 || n > 27 || !is_digits(p, 4))
        return 0;
    if (!two_digits(p + 4, 1, 12) || !two_digits(p + 6, 1, 31) || p[8] != '-' || !two_digits(p + 9, 0, 23)
        || p[11] != ':' || !two_digits(p + 12, 0, 59) || p[14] != ':' || !two_digits(p + 15, 0, 60))
        return 0;
    if (n == 17)
        return 1;
    return p[17] == '.' && is_digits(p + 18, n - 18); /* n >= 19 here */
}

/* The truth of a Python check's result (steals it): 1, 0, or -1 with an exception set. */
static int
truth_of(PyObject *r)
{
    if (r == NULL)
        return -1;
    int ok = PyObject_IsTrue(r);
    Py_DECREF(r);
    return ok;
}

/* set_checks(timestamp_fullmatch, is_char, is_boolean, fallback) */
static PyObject *
set_checks(PyObject *self, PyObject *args)
{
    PyObject *ts, *ch, *bo, *fb;
    if (!PyArg_ParseTuple(args, "OOOO", &ts, &ch, &bo, &fb))
        return NULL;
    Py_INCREF(ts);
    Py_INCREF(ch);
    Py_INCREF(bo);
    Py_INCREF(fb);
    Py_XSETREF(fn_timestamp, ts);
    Py_XSETREF(fn_char, ch);
    Py_XSETREF(fn_boolean, bo);
    Py_XSETREF(fn_fallback, fb);
    Py_RETURN_NONE;
}

/* plan_passes(checks, values) -> bool; set_checks' fallback(code, arg, val) for the other codes */
static PyObject *
plan_passes(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyTuple_CheckExact(args[0]) || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "plan_passes(tuple, list)");
        return NULL;
    }
    if (fn_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "plan_passes(): set_checks() first");
        return NULL;
    }
    PyObject *checks = args[0], *values = args[1], *fallback = fn_fallback;
    Py_ssize_t nv = PyList_GET_SIZE(values);
    Py_ssize_t nc = PyTuple_GET_SIZE(checks);
    for (Py_ssize_t k = 0; k < nc; k++) {
        PyObject *c = PyTuple_GET_ITEM(checks, k);
        if (!PyTuple_CheckExact(c) || PyTuple_GET_SIZE(c) != 3) {
            PyErr_SetString(PyExc_TypeError, "plan_passes: bad check");
            return NULL;
        }
        Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(c, 0));
        long code = PyLong_AsLong(PyTuple_GET_ITEM(c, 1));
        if (PyErr_Occurred())
            return NULL;
        if (i < 0 || i >= nv) {
            PyErr_SetString(PyExc_IndexError, "plan_passes: index out of range");
            return NULL;
        }
        PyObject *arg = PyTuple_GET_ITEM(c, 2);
        PyObject *val = PyList_GET_ITEM(values, i);
        if (!PyBytes_CheckExact(val)) {
            PyErr_SetString(PyExc_TypeError, "plan_passes: values must be bytes");
            return NULL;
        }
        const char *p = PyBytes_AS_STRING(val);
        Py_ssize_t n = PyBytes_GET_SIZE(val);
        int ok;
        switch (code) {
        case C_ENUM:
            ok = PySet_Contains(arg, val);
            if (ok < 0)
                return NULL;
            break;
        case C_FUNC: {
            if (arg == fn_timestamp) {
                ok = timestamp_ok(p, n);
                break;
            }
            if (arg == fn_char) {
                ok = n == 1;
                break;
            }
            if (arg == fn_boolean) {
                ok = n == 1 && (p[0] == 'Y' || p[0] == 'N');
                break;
            }
            ok = truth_of(PyObject_CallOneArg(arg, val));
            if (ok < 0)
                return NULL;
            break;
        }
        case C_FLOAT:
            ok = float_ok(p, n);
            break;
        case C_UINT:
            if (!PyBytes_CheckExact(arg)) {
                PyErr_SetString(PyExc_TypeError, "plan_passes: UINT bound must be bytes");
                return NULL;
            }
            ok = is_digits(p, n) && uint_fits(p, n, PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg));
            break;
        case C_COUNT:
            ok = PyBytes_CheckExact(arg) && PyBytes_GET_SIZE(arg) == n && memcmp(PyBytes_AS_STRING(arg), p, (size_t)n) == 0;
            break;
        default:
            ok = truth_of(PyObject_CallFunctionObjArgs(fallback, PyTuple_GET_ITEM(c, 1), arg, val, NULL));
            if (ok < 0)
                return NULL;
        }
        if (!ok)
            Py_RETURN_FALSE;
    }
    Py_RETURN_TRUE;
}

/* ---- session_fast ------------------------------------------------------------------------------ */
/* The fields session_fast reads. */
enum { F_49, F_56, F_34, F_43, F_52, F_11, F_37, F_41, F_115, F_128, N_FAST };

static inline int
fast_field(PyObject *tag)
{
    const char *s = PyBytes_AS_STRING(tag);
    Py_ssize_t n = PyBytes_GET_SIZE(tag);
    if (n < 2 || n > 3 || !is_digits(s, n))
        return -1;
    switch (digits_value(s, n)) {
    case 49: return F_49;
    case 56: return F_56;
    case 34: return F_34;
    case 43: return F_43;
    case 52: return F_52;
    case 11: return F_11;
    case 37: return F_37;
    case 41: return F_41;
    case 115: return F_115;
    case 128: return F_128;
    default: return -1;
    }
}

/* Python's bytes comparison: <0, 0, >0 */
static inline int
bytes_cmp(const char *a, Py_ssize_t an, const char *b, Py_ssize_t bn)
{
    int c = memcmp(a, b, (size_t)(an < bn ? an : bn));
    if (c != 0)
        return c;
    return an < bn ? -1 : an > bn;
}

static inline int
bytes_eq(PyObject *a, PyObject *b)
{
    return PyBytes_GET_SIZE(a) == PyBytes_GET_SIZE(b)
           && memcmp(PyBytes_AS_STRING(a), PyBytes_AS_STRING(b), (size_t)PyBytes_GET_SIZE(a)) == 0;
}

/* session_fast(msg, sender, target, next_seq, allowed, window)
 *   -> (seq, ClOrdID, OrderID, OrigClOrdID), each value None when absent, or None.
 *
 * session.py's header checks for a message the C scanner split, when they all pass with nothing
 * to do but move on: SenderCompID/TargetCompID equal sender/target, MsgSeqNum digits >= next_seq,
 * no PossDupFlag=Y, MsgType not Logon/SequenceReset/Logout and in `allowed` (a frozenset, or None:
 * any), no OnBehalfOfCompID/DeliverToCompID (the leak guard's spoofing check), and SendingTime's
 * first 17 bytes within window = (lo, hi) (or None: no check). Anything else: None, and the
 * inspector's Python path decides, as without this module. A tag that repeats: its last value, as
 * Message.index() has it. */
static PyObject *
session_fast(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "session_fast() takes 6 arguments");
        return NULL;
    }
    PyObject *msg = args[0], *sender = args[1], *target = args[2], *next = args[3], *allowed = args[4],
             *window = args[5];
    if (message_type == NULL || Py_TYPE(msg) != message_type || !PyBytes_Check(sender) || !PyBytes_Check(target)) {
        PyErr_SetString(PyExc_TypeError, "session_fast(Message, bytes, bytes, int, frozenset | None, tuple | None)");
        return NULL;
    }
    if ((allowed != Py_None && !PyAnySet_Check(allowed))
        || (window != Py_None
            && (!PyTuple_CheckExact(window) || PyTuple_GET_SIZE(window) != 2
                || !PyBytes_Check(PyTuple_GET_ITEM(window, 0)) || !PyBytes_Check(PyTuple_GET_ITEM(window, 1))))) {
        PyErr_SetString(PyExc_TypeError, "session_fast: allowed must be a (frozen)set or None, window "
                                         "(bytes, bytes) or None");
        return NULL;
    }
    PyObject *tags = *(PyObject **)((char *)msg + slot_offset[S_TAGS]);
    PyObject *values = *(PyObject **)((char *)msg + slot_offset[S_VALUES]);
    PyObject *mt = *(PyObject **)((char *)msg + slot_offset[S_MT]);
    if (tags == NULL || values == NULL || mt == NULL || !PyList_CheckExact(tags) || !PyList_CheckExact(values)
        || !PyBytes_CheckExact(mt) || PyList_GET_SIZE(tags) != PyList_GET_SIZE(values))
        Py_RETURN_NONE;
    if (PyBytes_GET_SIZE(mt) == 1) {
        char c = PyBytes_AS_STRING(mt)[0];
        if (c == 'A' || c == '4' || c == '5')
            Py_RETURN_NONE;
    }
    if (allowed != Py_None) {
        int r = PySet_Contains(allowed, mt);
        if (r < 0)
            return NULL;
        if (!r)
            Py_RETURN_NONE;
    }
    PyObject *f[N_FAST] = {NULL};
    for (Py_ssize_t i = PyList_GET_SIZE(tags) - 1; i >= 0; i--) {
        PyObject *t = PyList_GET_ITEM(tags, i), *v = PyList_GET_ITEM(values, i);
        if (!PyBytes_CheckExact(t) || !PyBytes_CheckExact(v))
            Py_RETURN_NONE;
        int k = fast_field(t);
        if (k >= 0 && f[k] == NULL)
            f[k] = v;
    }
    if (f[F_115] != NULL || f[F_128] != NULL || f[F_49] == NULL || f[F_56] == NULL || f[F_34] == NULL)
        Py_RETURN_NONE;
    if (!bytes_eq(f[F_49], sender) || !bytes_eq(f[F_56], target))
        Py_RETURN_NONE;
    if (f[F_43] != NULL && PyBytes_GET_SIZE(f[F_43]) == 1 && PyBytes_AS_STRING(f[F_43])[0] == 'Y')
        Py_RETURN_NONE;
    const char *d = PyBytes_AS_STRING(f[F_34]);
    Py_ssize_t dn = PyBytes_GET_SIZE(f[F_34]);
    if (dn > 18 || !is_digits(d, dn))
        Py_RETURN_NONE;
    long long seq = digits_value(d, dn);
    int overflow = 0;
    long long nx = PyLong_AsLongLongAndOverflow(next, &overflow);
    if (nx == -1 && PyErr_Occurred())
        return NULL;
    if (overflow || seq < nx)
        Py_RETURN_NONE;
    if (window != Py_None) {
        PyObject *lo = PyTuple_GET_ITEM(window, 0), *hi = PyTuple_GET_ITEM(window, 1), *st = f[F_52];
        if (st == NULL)
            Py_RETURN_NONE;
        Py_ssize_t sn = PyBytes_GET_SIZE(st) < 17 ? PyBytes_GET_SIZE(st) : 17;
        const char *sp = PyBytes_AS_STRING(st);
        if (bytes_cmp(PyBytes_AS_STRING(lo), PyBytes_GET_SIZE(lo), sp, sn) > 0
            || bytes_cmp(sp, sn, PyBytes_AS_STRING(hi), PyBytes_GET_SIZE(hi)) > 0)
            Py_RETURN_NONE;
    }
    PyObject *r = PyTuple_New(4);
    if (r == NULL)
        return NULL;
    PyObject *n = PyLong_FromLongLong(seq);
    if (n == NULL) {
        Py_DECREF(r);
        return NULL;
    }
    PyTuple_SET_ITEM(r, 0, n);
    PyObject *ids[3] = {f[F_11], f[F_37], f[F_41]};
    for (int i = 0; i < 3; i++) {
        PyObject *v = ids[i] != NULL ? ids[i] : Py_None;
        Py_INCREF(v);
        PyTuple_SET_ITEM(r, i + 1, v);
    }
    return r;
}

#ifdef FIXPROXY_HAVE_OPENSSL
/* ---- audit_rows ------------------------------------------------------------------------------ */
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

static const char hex_digits[] = "0123456789abcdef";
static PyObject *forwarded_str = NULL; /* "forwarded": the outcome of a Message item */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} outbuf;

static int
out_reserve(outbuf *b, Py_ssize_t more)
{
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap * 2;
    if (cap < b->len + more)
        cap = b->len + more + 256;
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static void
put_hex(char *dst, const unsigned char *md)
{
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        dst[2 * i] = hex_digits[md[i] >> 4];
        dst[2 * i + 1] = hex_digits[md[i] & 15];
    }
}

static Py_ssize_t
put_decimal(char *dst, Py_ssize_t v)
{
    char tmp[24];
    Py_ssize_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    for (Py_ssize_t i = 0; i < n; i++)
        dst[i] = tmp[n - 1 - i];
    return n;
}

/* The row's MsgSeqNum as JSON, when this function renders it the way audit.py does: None -> null,
 * digits -> their int (leading zeros dropped), other bytes -> null, a small int -> itself. 0: the
 * row goes to Python (an int too large here, digits past 18, another type). */
static Py_ssize_t
seq_json(PyObject *seq, char *dst)
{
    if (seq == Py_None) {
        memcpy(dst, "null", 4);
        return 4;
    }
    if (PyBytes_CheckExact(seq)) {
        const char *s = PyBytes_AS_STRING(seq);
        Py_ssize_t n = PyBytes_GET_SIZE(seq);
        if (!is_digits(s, n))
            goto null;
        while (n > 1 && *s == '0') {
            s++;
            n--;
        }
        if (n <= 0 || n > 18)
            return 0;
        memcpy(dst, s, (size_t)n);
        return n;
    null:
        memcpy(dst, "null", 4);
        return 4;
    }
    if (PyLong_CheckExact(seq)) {
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(seq, &overflow);
        if (overflow || (v == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        return (Py_ssize_t)snprintf(dst, 24, "%lld", v);
    }
    return 0;
}

/* audit_rows(items, row) -> the rows' JSON text: items are audit.py's (msg_seq_num, msg_type, raw,
 * outcome, reason) tuples, or forwarded Messages; row(item) renders a row this function does not. */
static PyObject *
audit_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "audit_rows(items: list, row: callable)");
        return NULL;
    }
    PyObject *items = args[0], *row = args[1];
    if (forwarded_str == NULL && (forwarded_str = PyUnicode_InternFromString("forwarded")) == NULL)
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(items);
    unsigned char md[SHA256_DIGEST_LENGTH];
    outbuf b = {NULL, 0, 0};
    PyObject *result = NULL;
    if (out_reserve(&b, 2 + n * 112) < 0)
        return NULL;
    b.p[b.len++] = '[';
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        PyObject *seq_obj, *raw, *mt, *outcome, *reason;
        if (message_type != NULL && Py_TYPE(item) == message_type) {
            /* a forwarded Message: its MsgSeqNum as received (the last 34 of its split fields;
             * unsplit: audit.py's row decides) */
            raw = *(PyObject **)((char *)item + slot_offset[S_RAW]);
            mt = *(PyObject **)((char *)item + slot_offset[S_MT]);
            PyObject *tags = *(PyObject **)((char *)item + slot_offset[S_TAGS]);
            PyObject *values = *(PyObject **)((char *)item + slot_offset[S_VALUES]);
            seq_obj = NULL;
            if (tags != NULL && values != NULL && PyList_CheckExact(tags) && PyList_CheckExact(values)
                && PyList_GET_SIZE(tags) == PyList_GET_SIZE(values)) {
                seq_obj = Py_None;
                for (Py_ssize_t j = PyList_GET_SIZE(tags) - 1; j >= 0; j--) {
                    PyObject *t = PyList_GET_ITEM(tags, j);
                    if (PyBytes_CheckExact(t) && PyBytes_GET_SIZE(t) == 2 && PyBytes_AS_STRING(t)[0] == '3'
                        && PyBytes_AS_STRING(t)[1] == '4') {
                        seq_obj = PyList_GET_ITEM(values, j);
                        break;
                    }
                }
            }
            outcome = forwarded_str;
            reason = Py_None;
            if (raw == NULL || mt == NULL)
                seq_obj = NULL;
        }
        else if (PyTuple_CheckExact(item) && PyTuple_GET_SIZE(item) == 5) {
            seq_obj = PyTuple_GET_ITEM(item, 0);
            mt = PyTuple_GET_ITEM(item, 1);
            raw = PyTuple_GET_ITEM(item, 2);
            outcome = PyTuple_GET_ITEM(item, 3);
            reason = PyTuple_GET_ITEM(item, 4);
        }
        else {
            PyErr_SetString(PyExc_TypeError, "audit item: a 5-tuple or a Message expected");
            goto done;
        }
        Py_buffer view;
        if (raw == NULL) { /* a Message without its bytes: audit.py's row raises what it raises */
            PyObject *text = PyObject_CallOneArg(row, item);
            Py_XDECREF(text);
            if (text != NULL)
                PyErr_SetString(PyExc_TypeError, "audit item: a Message without raw bytes");
            goto done;
        }
        if (PyObject_GetBuffer(raw, &view, PyBUF_SIMPLE) < 0)
            goto done;
        if (i > 0) {
            if (out_reserve(&b, 1) < 0) {
                PyBuffer_Release(&view);
                goto done;
            }
            b.p[b.len++] = ',';
        }
        int common = seq_obj != NULL && reason == Py_None && PyUnicode_CheckExact(outcome)
                     && PyUnicode_CompareWithASCIIString(outcome, "forwarded") == 0 && PyBytes_CheckExact(mt)
                     && PyBytes_GET_SIZE(mt) <= 16;
        if (common) {
            const unsigned char *m = (const unsigned char *)PyBytes_AS_STRING(mt);
            for (Py_ssize_t j = 0; j < PyBytes_GET_SIZE(mt); j++)
                if (m[j] < 0x20 || m[j] > 0x7e || m[j] == '"' || m[j] == '\\') {
                    common = 0;
                    break;
                }
        }
        char num[24];
        Py_ssize_t num_len = common ? seq_json(seq_obj, num) : 0;
        if (num_len > 0) {
            /* [num,"mt",len,"forwarded",null,"hex"] */
            if (out_reserve(&b, num_len + PyBytes_GET_SIZE(mt) + 24 + 20 + 2 * SHA256_DIGEST_LENGTH + 8) < 0) {
                PyBuffer_Release(&view);
                goto done;
            }
            char *o = b.p + b.len;
            *o++ = '[';
            memcpy(o, num, (size_t)num_len);
            o += num_len;
            *o++ = ',';
            *o++ = '"';
            memcpy(o, PyBytes_AS_STRING(mt), (size_t)PyBytes_GET_SIZE(mt));
            o += PyBytes_GET_SIZE(mt);
            *o++ = '"';
            *o++ = ',';
            o += put_decimal(o, view.len);
            memcpy(o, ",\"forwarded\",null,\"", 19);
            o += 19;
            SHA256(view.buf, (size_t)view.len, md);
            put_hex(o, md);
            o += 2 * SHA256_DIGEST_LENGTH;
            *o++ = '"';
            *o++ = ']';
            b.len = o - b.p;
            PyBuffer_Release(&view);
        }
        else {
            PyBuffer_Release(&view);
            PyObject *text = PyObject_CallOneArg(row, item);
            if (text == NULL)
                goto done;
            Py_ssize_t tlen;
            const char *t = PyUnicode_Check(text) ? PyUnicode_AsUTF8AndSize(text, &tlen) : NULL;
            if (t == NULL || out_reserve(&b, tlen) < 0) {
                if (t == NULL && !PyErr_Occurred())
                    PyErr_SetString(PyExc_TypeError, "audit row: str expected");
                Py_DECREF(text);
                goto done;
            }
            memcpy(b.p + b.len, t, (size_t)tlen);
            b.len += tlen;
            Py_DECREF(text);
        }
    }
    if (out_reserve(&b, 1) < 0)
        goto done;
    b.p[b.len++] = ']';
    result = PyUnicode_DecodeUTF8(b.p, b.len, NULL);
done:
    PyMem_Free(b.p);
    return result;
}
#endif

/* untracked_pair(a, b): the tuple (a, b), left out of the garbage collector when neither item can
   be part of a cycle (str, bytes, float, int: not GC objects). The leak guard keeps up to a million
   (session, time) pairs in one dict: a tuple is born tracked, and one tracked value keeps that dict
   tracked, so every full collection walked all of it (a cache miss per entry: 4-22 ms at 320k
   orders, the p99 at 50k msg/s). Such tuples are untracked by the collector only once it has looked
   at them; these never are. */
static PyObject *
untracked_pair(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "untracked_pair(a, b) takes two arguments");
        return NULL;
    }
    PyObject *t = PyTuple_Pack(2, args[0], args[1]);
    if (t != NULL && !PyObject_IS_GC(args[0]) && !PyObject_IS_GC(args[1]) && PyObject_GC_IsTracked(t))
        PyObject_GC_UnTrack(t);
    return t;
}

static PyMethodDef methods[] = {
    {"untracked_pair", (PyCFunction)(void (*)(void))untracked_pair, METH_FASTCALL,
     "untracked_pair(a, b) -> (a, b), untracked by the GC when neither item is a GC object"},
    {"configure", configure, METH_VARARGS, "configure(Message, careful_tags, single_tags)"},
    {"scan", (PyCFunction)(void (*)(void))scan, METH_FASTCALL, "frame and split consecutive good messages"},
    {"plan_passes", (PyCFunction)(void (*)(void))plan_passes, METH_FASTCALL, "a dictionary plan's value checks"},
    {"set_checks", set_checks, METH_VARARGS, "set_checks(timestamp_fullmatch, is_char, is_boolean, fallback)"},
    {"session_fast", (PyCFunction)(void (*)(void))session_fast, METH_FASTCALL, "the session's header checks"},
#ifdef FIXPROXY_HAVE_OPENSSL
    {"audit_rows", (PyCFunction)(void (*)(void))audit_rows, METH_FASTCALL, "audit_rows(items, row) -> the rows' JSON"},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "fixproxy._speedups", NULL, -1, methods};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    return PyModule_Create(&module);
}

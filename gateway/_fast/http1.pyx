# cython: language_level=3, boundscheck=False, wraparound=False
"""HTTP/1.1 message heads in one pass, for the common case (compiled; twin: ``_http1_py.py``).

See the twin for the contract: a whole plain message is parsed in one call;
anything else returns None and the caller hands the bytes to httptools. The
grammar accepted here is exactly the twin's (tests compare the two), including
what makes a request strict (one valid ``Host``, no fragment): the twin says why.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_SetItem
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeLatin1
from libc.stdint cimport uint64_t
from libc.string cimport memchr, memcmp, memcpy


cdef extern from "Python.h":
    PyObject* PyDict_SetDefault(object d, object key, object default) except NULL

__all__ = ["keep_alive", "parse_request", "parse_response"]

cdef enum:
    MAX_NAME = 256  # longer header names go to httptools
    MAX_METHOD = 16
    MAX_DIGITS = 15  # Content-Length digits

# Character classes, one byte per character: 1 = allowed.
cdef unsigned char TCHAR[256]
cdef unsigned char VALUE[256]
cdef unsigned char TARGET[256]
cdef unsigned char HOST[256]


cdef void _init_tables():
    cdef int c
    for c in range(256):
        TCHAR[c] = 0
        VALUE[c] = 1 if (c == 9 or c == 32 or 0x21 <= c <= 0x7E or c >= 0x80) else 0
        # '#' starts a fragment, never sent in a request (RFC 9112 3.2): httptools' path refuses it.
        TARGET[c] = 1 if 0x21 <= c <= 0x7E and c != 0x23 else 0
        HOST[c] = 0
    for c in b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
        TCHAR[c] = 1
    for c in b"!$%&'()*+-.0123456789:;=ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxyz~":
        HOST[c] = 1


_init_tables()

# Header names seen on nearly every request or response: matched in place and
# answered with one shared str (no new string, its hash already computed).
# Each has a role: 0 plain, 1 Content-Length, 2 left to httptools, 3 Host (requests: once, valid).
_KNOWN = (
    ("host", 3), ("content-type", 0), ("content-length", 1), ("accept", 0), ("connection", 0), ("user-agent", 0),
    ("mcp-session-id", 0), ("mcp-protocol-version", 0), ("origin", 0), ("authorization", 0), ("accept-encoding", 0),
    ("last-event-id", 0), ("mcp-method", 0), ("mcp-name", 0), ("date", 0), ("server", 0), ("cache-control", 0),
    ("keep-alive", 0), ("transfer-encoding", 2), ("upgrade", 2),
)
cdef enum:
    N_KNOWN = 20
cdef tuple _KNOWN_BYTES = tuple(name.encode() for name, _ in _KNOWN)
cdef tuple _KNOWN_STR = tuple(name for name, _ in _KNOWN)
cdef const char* KNOWN_NAME[N_KNOWN]
cdef Py_ssize_t KNOWN_LEN[N_KNOWN]
cdef int KNOWN_ROLE[N_KNOWN]


cdef void _init_known():
    cdef int i
    for i in range(N_KNOWN):
        KNOWN_NAME[i] = PyBytes_AS_STRING(_KNOWN_BYTES[i])
        KNOWN_LEN[i] = PyBytes_GET_SIZE(_KNOWN_BYTES[i])
        KNOWN_ROLE[i] = _KNOWN[i][1]


assert len(_KNOWN) == N_KNOWN
_init_known()


cdef int _known(const char* name, Py_ssize_t n):
    """Index of a lower-cased name in the known names, or -1."""
    cdef int i
    for i in range(N_KNOWN):
        if KNOWN_LEN[i] == n and memcmp(KNOWN_NAME[i], name, n) == 0:
            return i
    return -1


cdef Py_ssize_t _find_crlf(const char* p, Py_ssize_t pos, Py_ssize_t stop):
    """Index of the first CRLF in p[pos:stop], or -1."""
    while pos + 1 < stop:
        if p[pos] == b'\r' and p[pos + 1] == b'\n':
            return pos
        pos += 1
    return -1


cdef Py_ssize_t _find_head_end(const char* p, Py_ssize_t pos, Py_ssize_t n):
    """Index of the first CRLFCRLF at or after pos, or -1 (memchr finds each LF candidate)."""
    cdef const char* hit
    cdef Py_ssize_t i
    while pos + 3 < n:
        hit = <const char*>memchr(p + pos + 3, b'\n', n - pos - 3)
        if hit == NULL:
            return -1
        i = hit - p
        if p[i - 3] == b'\r' and p[i - 2] == b'\n' and p[i - 1] == b'\r':
            return i - 3
        pos = i - 2  # the next candidate's LF is after this one
    return -1


cdef uint64_t ONES = 0x0101010101010101ULL
cdef uint64_t HIGHS = 0x8080808080808080ULL
cdef uint64_t DELS = 0x7F7F7F7F7F7F7F7FULL


cdef inline Py_ssize_t _value_end(const char* p, Py_ssize_t pos, Py_ssize_t stop) noexcept:
    """Index of the first byte at or after ``pos`` that is not a header-value byte (``VALUE``).

    Eight bytes at a time while none of them is below 0x20 or 0x7F (the only bytes ``VALUE``
    refuses, with tab, which the byte loop then judges): a long value (a bearer token) costs a
    word test per eight bytes instead of a table lookup per byte. Words are read only below
    ``stop``, the end of the buffer's head (its final CRLFCRLF included), never past it."""
    cdef uint64_t w, d
    while pos + 8 <= stop:
        memcpy(&w, p + pos, 8)
        d = w ^ DELS
        # Any byte < 0x20 (exact for thresholds up to 0x80), or any byte == 0x7F (a zero in w ^ 0x7F..).
        if ((w - ONES * 0x20) & ~w & HIGHS) or ((d - ONES) & ~d & HIGHS):
            break
        pos += 8
    while VALUE[<unsigned char>p[pos]]:
        pos += 1
    return pos


cdef object _headers(
    const char* p, Py_ssize_t pos, Py_ssize_t head_end, long max_headers, long long* length, int* hosts
):
    """Header lines in p[pos:head_end]; sets length (-1 when absent). None when not plain.

    ``hosts`` is NULL for a response; for a request it is set to the number of ``Host``
    lines (0 or 1: a second one, or an empty or invalid value, is not plain)."""
    cdef dict headers = {}
    cdef Py_ssize_t eol, colon, vs, ve, i
    cdef long count = 0
    cdef unsigned char c
    cdef char name[MAX_NAME]
    cdef long long value_length
    cdef int known, role
    cdef Py_ssize_t size
    length[0] = -1
    if hosts != NULL:
        hosts[0] = 0
    # One pass over each line: the name (checked and lower-cased), then the value (checked)
    # up to its CR. Every scan stops at the CR that ends the head, so none can overrun.
    while pos < head_end:
        count += 1
        if count > max_headers:
            return None
        colon = pos
        while TCHAR[<unsigned char>p[colon]]:
            if colon - pos >= MAX_NAME:
                return None
            c = <unsigned char>p[colon]
            name[colon - pos] = c + 32 if 65 <= c <= 90 else c
            colon += 1
        if colon == pos or p[colon] != b':':
            return None
        vs = colon + 1
        eol = _value_end(p, vs, head_end + 4)
        if p[eol] != b'\r' or p[eol + 1] != b'\n':
            return None
        ve = eol
        while vs < ve and (p[vs] == b' ' or p[vs] == b'\t'):
            vs += 1
        while ve > vs and (p[ve - 1] == b' ' or p[ve - 1] == b'\t'):
            ve -= 1
        known = _known(name, colon - pos)
        role = KNOWN_ROLE[known] if known >= 0 else 0
        if role == 2:
            return None
        key = _KNOWN_STR[known] if known >= 0 else PyUnicode_DecodeLatin1(name, colon - pos, NULL)
        value = PyUnicode_DecodeLatin1(p + vs, ve - vs, NULL)
        if role == 1:
            if length[0] >= 0 or ve == vs or ve - vs > MAX_DIGITS:
                return None
            value_length = 0
            for i in range(vs, ve):
                c = <unsigned char>p[i]
                if c < 48 or c > 57:
                    return None
                value_length = value_length * 10 + (c - 48)
            length[0] = value_length
        elif role == 3 and hosts != NULL:
            if hosts[0] or ve == vs:
                return None
            for i in range(vs, ve):
                if not HOST[<unsigned char>p[i]]:
                    return None
            hosts[0] = 1
        size = len(headers)
        previous = <object>PyDict_SetDefault(headers, key, value)
        if len(headers) == size:  # a repeated header: values joined, as RFC 9110 allows
            PyDict_SetItem(headers, key, f"{previous}, {value}")
        pos = eol + 2
    return headers


def parse_request(bytes data, Py_ssize_t start, long max_url, long max_headers, long max_head, long long max_body):
    """A complete plain request at ``data[start:]``: ``(method, target, http11, headers,
    body_start, end)``, or None (let httptools have it). See ``_http1_py.parse_request``."""
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t head_end, eol, sp1, sp2, i
    cdef long long length
    cdef bint http11
    cdef int hosts
    head_end = _find_head_end(p, start, n)
    if head_end < 0 or head_end - start > max_head:
        return None
    eol = _find_crlf(p, start, head_end + 2)
    sp1 = start
    while sp1 < eol and 65 <= <unsigned char>p[sp1] <= 90:
        sp1 += 1
    if sp1 == start or sp1 - start > MAX_METHOD or sp1 >= eol or p[sp1] != b' ':
        return None
    sp2 = sp1 + 1
    if p[sp2] != b'/':  # origin-form only: httptools judges every other form (it refuses ":/", say)
        return None
    while sp2 < eol and TARGET[<unsigned char>p[sp2]]:
        sp2 += 1
    if sp2 == sp1 + 1 or sp2 - sp1 - 1 > max_url or sp2 >= eol or p[sp2] != b' ':
        return None
    if eol - sp2 - 1 != 8 or memcmp(p + sp2 + 1, b"HTTP/1.", 7) != 0:
        return None
    if p[eol - 1] == b'1':
        http11 = True
    elif p[eol - 1] == b'0':
        http11 = False
    else:
        return None
    headers = _headers(p, eol + 2, head_end, max_headers, &length, &hosts)
    if headers is None or length > max_body or (http11 and not hosts):  # HTTP/1.1 requires Host
        return None
    if length < 0:
        length = 0
    if head_end + 4 + length > n:
        return None
    return (
        PyUnicode_DecodeLatin1(p + start, sp1 - start, NULL),
        PyUnicode_DecodeLatin1(p + sp1 + 1, sp2 - sp1 - 1, NULL),
        http11,
        headers,
        head_end + 4,
        head_end + 4 + length,
    )


def parse_response(bytes data, Py_ssize_t start, long max_headers):
    """A complete response with a ``Content-Length`` body at ``data[start:]``: ``(status,
    http11, headers, body_start, end)``, or None. See ``_http1_py.parse_response``."""
    cdef const char* p = PyBytes_AS_STRING(data)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef Py_ssize_t head_end, eol, i
    cdef long long length
    cdef int status
    cdef bint http11
    head_end = _find_head_end(p, start, n)
    if head_end < 0:
        return None
    eol = _find_crlf(p, start, head_end + 2)
    if eol - start < 13 or memcmp(p + start, b"HTTP/1.", 7) != 0 or p[start + 8] != b' ' or p[start + 12] != b' ':
        return None
    if p[start + 7] == b'1':
        http11 = True
    elif p[start + 7] == b'0':
        http11 = False
    else:
        return None
    status = 0
    for i in range(start + 9, start + 12):
        if p[i] < b'0' or p[i] > b'9':
            return None
        status = status * 10 + (p[i] - 48)
    if p[start + 9] == b'0' or status < 200:
        return None
    for i in range(start + 13, eol):
        if not VALUE[<unsigned char>p[i]]:
            return None
    headers = _headers(p, eol + 2, head_end, max_headers, &length, NULL)
    if headers is None or length < 0:
        return None
    if head_end + 4 + length > n:
        return None
    return status, http11, headers, head_end + 4, head_end + 4 + length


cpdef bint keep_alive(bint http11, object connection):
    """Whether the connection stays open after this message. See ``_http1_py.keep_alive``."""
    if connection is None:
        return http11
    tokens = {t.strip() for t in connection.lower().split(",")}
    return "close" not in tokens if http11 else "keep-alive" in tokens

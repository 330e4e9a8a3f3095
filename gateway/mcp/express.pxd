# The types of express.py when compiled (gateway._fast.pure_mode): its per-call classes as
# extension types with typed attributes, so reading one is a C struct access. Every
# attribute a class sets must be declared here, and listed in its __slots__ (a test checks).

from gateway.mcp.sessions cimport Session, SessionStore
from gateway.server.api cimport Request

cdef class ExpressLane:
    cdef public object front
    cdef public object path
    cdef public dict verdicts
    cdef public object passed
    cdef public SessionStore sessions
    cdef public object catalog
    cdef public object slow_calls
    cdef public object keepalive

    cdef bint _take(self, Request request, object reply)

cdef class _Call:
    cdef public object front
    cdef public object msg
    cdef public Session session
    cdef public object backend
    cdef public object reply
    cdef public object params
    cdef public object stream
    cdef public object upstream_id
    cdef public object handle

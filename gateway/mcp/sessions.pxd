# The types of sessions.py when compiled (gateway._fast.pure_mode): its per-call classes as
# extension types with typed attributes, so reading one is a C struct access. Every
# attribute a class sets must be declared here, and listed in its __slots__ (a test checks).

cdef class Session:
    cdef public str id
    cdef public str protocol_version
    cdef public object client_capabilities
    cdef public object client_info
    cdef public double last_seen
    cdef public object stream
    cdef public bint initialized
    cdef public dict inflight
    cdef public set subscriptions
    cdef public object log_level

cdef class RequestContext:
    cdef public object era
    cdef public object protocol_version
    cdef public object session
    cdef public object session_key
    cdef public object capabilities
    cdef public object client_info
    cdef public object headers
    cdef public object log_level
    cdef public object params
    cdef public object meta

cdef class SessionStore:
    cdef public object _secret
    cdef public dict _sessions
    cdef public double _idle_timeout
    cdef public object _on_end
    cdef public object _sweeper

    cpdef Session get(self, str session_id)

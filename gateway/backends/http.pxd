# The types of http.py when compiled (gateway._fast.pure_mode): its per-call classes as
# extension types with typed attributes, so reading one is a C struct access. Every
# attribute a class sets must be declared here, and listed in its __slots__ (a test checks).

cdef class _Exchange:
    cdef public object future
    cdef public object upstream_id
    cdef public object sink
    cdef public int status
    cdef public object headers
    cdef public list body
    cdef public object sse
    cdef public bint got_bytes
    cdef public bint answered
    cdef public object session
    cdef public int resumes
    cdef public object last_id
    cdef public object retry
    cdef public object on_answer
    cdef public object conn
    cdef public object ticket
    cdef public double limit
    cdef public bint finished

cdef class _Conn:
    cdef public object backend
    cdef public object parser
    cdef public object transport
    cdef public object exchange
    cdef public bint reused
    cdef public bint closed
    cdef public bint in_message

cdef class _QueuedCall:
    cdef public object backend
    cdef public object method
    cdef public object params
    cdef public object ticket
    cdef public object sink
    cdef public object on_answer
    cdef public bint finished

cdef class _UpSession:
    cdef public object session_id
    cdef public object version
    cdef public object lock
    cdef public bint ready
    cdef public object capabilities
    cdef public bytes _head
    cdef public object _head_for

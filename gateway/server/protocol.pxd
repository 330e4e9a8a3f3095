# The types of protocol.py when compiled (gateway._fast.pure_mode): its per-call classes as
# extension types with typed attributes, so reading one is a C struct access. Every
# attribute a class sets must be declared here, and listed in its __slots__ (a test checks).

cdef class HttpProtocol

cdef class _Cycle:
    cdef public HttpProtocol proto
    cdef public bint keep_alive
    cdef public list buffer
    cdef public bint head_sent
    cdef public bint streaming
    cdef public bint done
    cdef public bint _closed
    cdef public bint _stopping
    cdef public object _waiter
    cdef public object on_disconnect

    cpdef bytes _connection_header(self)
    cpdef _finish(self)
    cpdef _mark_closed(self)
    cpdef _wake(self)

cdef class HttpProtocol:
    cdef public object app
    cdef public object express
    cdef public object config
    cdef public object state
    cdef public object loop
    cdef public object parser
    cdef public object transport
    cdef public object client
    cdef public object cycles
    cdef public object next
    cdef public object worker
    cdef public object wakeup
    cdef public bint http11
    cdef public bint reading_paused
    cdef public bint writing_paused
    cdef public list drain_waiters
    cdef public object header_timer
    cdef public object idle_timer
    cdef public bint in_headers
    cdef public bint in_message
    cdef public bint headers_pending
    cdef public double last_active
    cdef public Py_ssize_t header_bytes
    cdef public bytes tail
    cdef public bytes url
    cdef public dict headers
    cdef public Py_ssize_t header_count
    cdef public list body
    cdef public Py_ssize_t body_size

    cpdef bytes _parse_whole(self, bytes data)
    cpdef _dispatch(self, object request, bint keep)
    cpdef _wake_worker(self)
    cpdef _emit(self, _Cycle cycle, bytes data)
    cpdef _cycle_done(self, _Cycle cycle)

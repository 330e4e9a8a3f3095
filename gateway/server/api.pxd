# The types of api.py when compiled (gateway._fast.pure_mode): its per-call classes as
# extension types with typed attributes, so reading one is a C struct access. Every
# attribute a class sets must be declared here, and listed in its __slots__ (a test checks).

cdef class Request:
    cdef public str method
    cdef public str path
    cdef public str query
    cdef public dict headers
    cdef public bytes body
    cdef public object client
    cdef public bint keep_alive

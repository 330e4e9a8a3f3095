# The types of api.py when compiled (gateway._fast.pure_mode): its per-call classes as
# extension types with typed attributes, so reading one is a C struct access. Every
# attribute a class sets must be declared here, and listed in its __slots__ (a test checks).

cdef class Request:
    cdef public object method
    cdef public object path
    cdef public object query
    cdef public object headers
    cdef public object body
    cdef public object client
    cdef public object keep_alive

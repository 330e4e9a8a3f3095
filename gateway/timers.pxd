# The types of timers.py when compiled (gateway._fast.pure_mode): its per-call classes as
# extension types with typed attributes, so reading one is a C struct access. Every
# attribute a class sets must be declared here, and listed in its __slots__ (a test checks).

cdef class Deadlines:
    cdef readonly double _resolution
    cdef readonly dict _due
    cdef readonly object _loop
    cdef readonly object _tick
    cpdef add(self, object key, double delay, object callback, object arg=*)
    cpdef discard(self, object key)

"""Sans-I/O Sheepdog 1.0 codec shared by the client and the embedded server.

Bytes in, typed messages out: no sockets, clocks, threads or logging here.
Modules: ``constants`` (opcodes, flags, result codes, sizes), ``header``
(request/response headers and union variants), ``framing`` (incremental
readers), ``oid``, ``naming`` (VDI name hash, name/tag fields), ``inode``,
``bitmap`` (vid bitmaps), ``structs`` (node, epoch log, cluster info, vdi
state, attributes).  This package imports nothing eagerly so that
``sheepdog_backend.exception`` can use ``constants`` without a cycle.
"""

"""The wire engine shared by ``serve`` and ``gateway``: one event loop over
every connection (loop.py), requests framed in place and admitted within a
memory budget (conn.py, admission.py), listeners, limits and timeouts
(engine.py), and worker threads for handlers that block (workers.py)."""

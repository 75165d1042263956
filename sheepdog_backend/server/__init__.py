"""Embedded single-node Sheepdog-compatible server: a pure request handler
(``handler``) over a durable object store (``store``), and a thin TCP loop
(``server``)."""

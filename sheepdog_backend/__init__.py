"""sheepdog-backend: a Sheepdog volume driver with a native wire-protocol client."""

from sheepdog_backend import exception

__version__ = "0.1.0"
__all__ = ["__version__", "exception"]

"""Gateway addresses (kept for importers of ``sheepdog_backend.driver.addresses``):
the parser lives in ``sheepdog_backend.addresses`` so that ``opts`` can use it
without importing ``driver/``."""

from sheepdog_backend.addresses import (
    DEFAULT_PORT,
    format_gateway,
    parse_gateway,
    same_endpoint,
    validate_host,
    validate_port,
)

__all__ = ["DEFAULT_PORT", "format_gateway", "parse_gateway", "same_endpoint",
           "validate_host", "validate_port"]

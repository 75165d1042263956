"""Native Sheepdog client: transport, pools, gateway cluster, retries, VDI and
data operations.  ``SheepdogClient`` is the entry point."""

from sheepdog_backend.client.client import SheepdogClient
from sheepdog_backend.client.models import VdiInfo
from sheepdog_backend.client.retry import RetryPolicy
from sheepdog_backend.client.survey import Ask, Survey
from sheepdog_backend.client.transport import Address, parse_address

__all__ = ["Address", "Ask", "RetryPolicy", "SheepdogClient", "Survey", "VdiInfo",
           "parse_address"]

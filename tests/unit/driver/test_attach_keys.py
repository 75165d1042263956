"""The driver reads a volume's export record in its survey under
attach.EXPORT_KEY; the export manager writes it under RECORD_KEY: one key."""

from sheepdog_backend.driver import attach
from sheepdog_backend.export.manager import RECORD_KEY


def test_the_driver_reads_the_key_the_export_manager_writes() -> None:
    assert attach.EXPORT_KEY == RECORD_KEY

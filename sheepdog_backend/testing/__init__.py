"""Testing support shipped with the package: the embedded-server fixture and
the driver conformance suite that third parties can run against any driver."""

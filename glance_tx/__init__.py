"""glance-tx: a VM image service on the Twisted reactor."""

__version__ = "0.1.0"

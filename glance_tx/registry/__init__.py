"""Image metadata: the L{IRegistry} interface and its providers."""

from glance_tx.registry.interface import IRegistry

__all__ = ["IRegistry"]

"""Persistence: typed tables, migrations, and the one module that owns transactions."""

from monitor.store.store import EndpointKey, LastProbe, Store, StoreError, WindowStats

__all__ = ["EndpointKey", "LastProbe", "Store", "StoreError", "WindowStats"]

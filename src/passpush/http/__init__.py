"""The HTTP transport: the vendor REST shim and the PassKit web service (not built yet)."""

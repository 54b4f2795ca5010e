"""The HTTP transport: the vendor REST shim (app.py), a client of the gRPC service."""

"""The core: use cases that every transport (gRPC, the HTTP shim, the CLI) calls."""

"""The gRPC transport: thin servicers over the core, the error mapping, the server."""

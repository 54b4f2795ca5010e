"""The HTTP transport: the vendor REST shim (vendors/, a client of the gRPC service) and
Apple's PassKit web service (passkit/, calling the service core in-process).

What both share lives here: the one ASGI app that mounts them (app.py), request body
limits, the probes, the listening sockets, the responses' writes, the HTTP processes and
their turns at accepting connections.
"""

"""The REST shapes of Airship, PassEntry and WalletWerk, translated onto the gRPC service.

A client of the gRPC server like any other: each request's key becomes its calls'
credentials (rpc.py), so the server authenticates and authorizes every call.
"""

"""Apple's PassKit web service, which Wallet devices call at their passes' webServiceURL.

In-process: a device authenticates with its pass's token, not an API key, so the routes
call the service core directly rather than through the gRPC stubs.
"""

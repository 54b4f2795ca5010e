"""Delivery: outbox workers, retry and the platform gateways (APNs, Google Wallet)."""

"""Real local servers (over loopback) that stand in for external services in tests and demos."""

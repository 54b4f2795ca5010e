"""The outbox between the use cases and delivery: what is accepted into it and fanned out."""

"""The outbox between the use cases and delivery: accepting Sends and fanning them out,
claiming due deliveries under leases, recording what the platforms answered (Google class
messages too: one per broadcast to a whole class, recorded on its waiting deliveries)."""

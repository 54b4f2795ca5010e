"""The composition root: what a passpush process builds, starts and stops, for its role.

One place wires the application: the engine and its sessions, the cores, the delivery
worker and the loops beside it, the gRPC server, the wake-ups between processes
(`application.py`). `serving.py` builds it from the settings for `passpush serve`, with
the gateways and files `wallets.py` opens; the tests build `Application` directly, with
their fakes.

Roles (`passpush serve --role`, PASSPUSH_ROLE):
- `api`: the gRPC server and the HTTP server (vendor shim, PassKit web service), with what
  answers their calls: accepting Sends (committed before the answer), reading tickets and
  events, recording which devices fetched what (the PassKit web service hands it over).
- `worker`: the delivery worker, and the loops that make or keep up its work rather than
  answer a call: the fan-out of broadcasts (its chunks are the worker's next deliveries,
  and a bulk write that competes with no call for this process's event loop), the
  scheduler (a timer whose Sends are the worker's work), event retention and, on
  PostgreSQL, the planner statistics refreshed after bulk changes (periodic database chores).
- `all` (the default): both, in one process.

Processes of either role find each other through the database (store/wakeups.py): a Send
accepted by an `api` process wakes the workers at once, and the workers' outcomes wake the
`api` processes' status streams.
"""

from passpush.app.application import Application

__all__ = ["Application"]

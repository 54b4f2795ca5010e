"""google-broadcast: a Send to every holder of a Google class, through the fake Google API.

`google_passes` (100,000) passes of one Google template, loaded through ImportPasses as a
user loads them, then a Send to the template: one message on the class. Reported: the API
calls passpush made to the fake Google Wallet API (a real HTTP server in this process, with
its token endpoint), and the time from the Send to a terminal ticket that counts every
pass. Beside it, the per-object path a subset still takes (a Send to a tag of
`google_sample` passes, one addMessage each at PASSPUSH_GOOGLE_RATE, 20/s by default), and
what that rate means for the whole audience.
"""

from __future__ import annotations

import time

from benchmarks.database import PROJECT, bench_database
from benchmarks.harness import Options, Result, log, workspace
from benchmarks.pass_import import PER_MESSAGE, load
from benchmarks.server import ApnsAuth, Client, client, serve
from passpush.fakes.apns import FakeApns
from passpush.fakes.google import FakeGoogleWallet, make_service_account
from passpush.fakes.tls import make_tls_bundle
from passpush.v1 import notifications_pb2 as pb
from passpush.v1 import passes_pb2 as ppb

NAME = "google-broadcast"
TEMPLATE = "offers"
ISSUER = "3388000000012345678"
CLASS_ID = f"{ISSUER}.offers"
SAMPLE_TAG = "sample"
CONTENT = pb.Content(header="Offer", body="Double points this weekend")


def google_template() -> ppb.CreateTemplateRequest:
    return ppb.CreateTemplateRequest(
        template_id=TEMPLATE,
        template=ppb.Template(
            project_id=PROJECT,
            platform=ppb.PLATFORM_GOOGLE,
            google_class_id=CLASS_ID,
            google_object_type="offerObject",
        ),
    )


def requests(count: int, sample: int) -> list[bytes]:
    """Each pass with its object id; the first `sample` tagged SAMPLE_TAG; serialized."""
    entries = [
        ppb.ImportEntry(
            **{  # type: ignore[arg-type]
                "pass": ppb.Pass(
                    id=f"g{index:08d}",
                    template_id=TEMPLATE,
                    google_object_id=f"{ISSUER}.g{index:08d}",
                    tags=[SAMPLE_TAG] if index < sample else [],
                )
            }
        )
        for index in range(count)
    ]
    return [
        ppb.ImportPassesRequest(entries=entries[start : start + PER_MESSAGE]).SerializeToString()
        for start in range(0, count, PER_MESSAGE)
    ]


async def run(options: Options) -> list[Result]:
    count, sample = options.google_passes, options.google_sample
    results: list[Result] = []
    with workspace(NAME, options) as workdir:
        account = make_service_account(workdir / "google")
        async with (
            FakeApns(make_tls_bundle(workdir / "tls")) as apns,
            FakeGoogleWallet(account, create_objects=True) as google,
        ):
            auth = ApnsAuth.make(options.apns_auth, apns, workdir)
            google_env = {
                "PASSPUSH_GOOGLE_CREDENTIALS": str(account.key_file),
                "PASSPUSH_GOOGLE_API_BASE": google.api_base,
                "PASSPUSH_GOOGLE_TOKEN_URL": google.token_url,
            }
            for backend in options.backends:
                async with (
                    bench_database(backend, workdir) as database,
                    serve(database, apns, auth, workdir, extra_env=google_env) as deployment,
                ):
                    seconds, _ = await load(
                        deployment.address,
                        deployment.key,
                        requests(count, sample),
                        google_template(),
                    )
                    log(f"{NAME} on {backend}: {count:,} Google passes imported in {seconds:.1f} s")
                    async with client(deployment.address, deployment.key) as c:
                        google.reset()
                        whole, whole_seconds = await _send(
                            c, pb.Target(template=pb.TemplateRef(template_id=TEMPLATE)), count
                        )
                        calls = len(google.received())
                        subset_target = pb.Target(tag=pb.TagRef(tag=SAMPLE_TAG))
                        google.reset()
                        _, subset_seconds = await _send(c, subset_target, sample)
                        subset_calls = len(google.received())
                rate = sample / subset_seconds
                log(
                    f"{NAME} on {backend}: the class message reached {whole.counts.delivered:,} "
                    f"passes in {whole_seconds:.1f} s with {calls} API call(s); per object, "
                    f"{sample} passes took {subset_seconds:.1f} s ({subset_calls} calls)"
                )
                results += [
                    Result(
                        f"google-broadcast: a Send to {count:,} holders of one class, "
                        "Google API calls",
                        backend,
                        f"{calls} API call(s), {whole.counts.delivered:,} passes delivered",
                        "1 call",
                        calls == 1 and whole.counts.delivered == count,
                    ),
                    Result(
                        f"google-broadcast: Send to a terminal ticket, {count:,} holders",
                        backend,
                        f"{whole_seconds:.1f} s",
                    ),
                    Result(
                        f"google-broadcast: per object, a tag of {sample} passes "
                        "(PASSPUSH_GOOGLE_RATE 20/s)",
                        backend,
                        f"{subset_seconds:.1f} s = {rate:.0f} passes/s; {count:,} would take "
                        f"{count / rate / 60:,.0f} min",
                    ),
                ]
    return results


async def _send(client: Client, target: pb.Target, passes: int) -> tuple[pb.Ticket, float]:
    """Sends, waits for the ticket to be terminal; the ticket and the seconds it took."""
    started = time.perf_counter()
    ticket = await client.send(pb.SendRequest(target=target, content=CONTENT))
    final, finished = await client.wait_terminal(ticket.id, within=600 + passes / 10)
    if final.state != pb.TICKET_STATE_SUCCEEDED:
        raise RuntimeError(f"{NAME}: ticket {ticket.id} ended {pb.TicketState.Name(final.state)}")
    return final, finished - started

"""`touchpoint webhooks`: outbound webhooks to the practice's own systems (docs/webhooks-out.md)."""

from __future__ import annotations

from urllib.parse import urlsplit

import click

from engine import audit, clock, outbound_webhooks
from engine.cli.common import app_of, echo_json
from engine.cli.root import cli as _cli
from engine.outbound_webhooks import delivery


@_cli.group("webhooks")
def webhooks() -> None:
    """Send what happens (confirmations, opt-outs, cases, failed and delivered messages)
    to the practice's own systems, signed per the Standard Webhooks specification."""


def _where(url: str) -> str:
    """The URL without its query string (which may hold a token), for the audit log."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


@webhooks.command("add")
@click.argument("url")
@click.option("--events", "events", required=True, metavar="TYPE,TYPE…",
              help="Event types to send, comma-separated: "
                   + ", ".join(outbound_webhooks.EVENT_TYPES) + ".")
@click.option("--json", "as_json", is_flag=True, help="Print the endpoint as JSON.")
@click.pass_context
def add_cmd(ctx: click.Context, url: str, events: str, as_json: bool) -> None:
    """Register URL for these events; prints its id and signing secret (shown once)."""
    app = app_of(ctx)
    warning = outbound_webhooks.check_url(url)
    types = outbound_webhooks.parse_event_types(events)
    now = clock.now()
    with app.db().transaction() as conn:
        endpoint = outbound_webhooks.add_endpoint(conn, url, types, now)
        audit.record(conn, actor=audit.cli_actor(), action="webhook.add", now=now,
                     target=f"webhook-endpoint:{endpoint.id}", address="cli",
                     detail={"url": _where(url), "events": list(types)})
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        echo_json({**endpoint.as_dict(), "secret": endpoint.secret})
        return
    click.echo(f"endpoint {endpoint.id}: {url}\n"
               f"events: {', '.join(types)}\n"
               f"signing secret (shown once; keep it with the receiver): {endpoint.secret}")


@webhooks.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (one list).")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """The endpoints, their events and whether they are enabled (never their secrets)."""
    with app_of(ctx).db().transaction() as conn:
        found = [e.as_dict() for e in outbound_webhooks.list_endpoints(conn)]
        waiting = {e["id"]: len(delivery.pending(conn, e["id"])) for e in found}
    for entry in found:
        entry["pending"] = waiting[entry["id"]]
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("No webhook endpoints. Add one: touchpoint webhooks add URL --events "
                   "appointment.confirmed,patient.opted_out")
        return
    for entry in found:
        state = "enabled" if entry["enabled"] else \
            f"DISABLED ({entry['disabled_reason'] or 'by staff'})"
        click.echo(f"{entry['id']}  {entry['url']}  {state}  {entry['pending']} pending\n"
                   f"    {', '.join(entry['events'])}")


@webhooks.command("remove")
@click.argument("endpoint_id", metavar="ID", type=int)
@click.pass_context
def remove_cmd(ctx: click.Context, endpoint_id: int) -> None:
    """Stop sending to endpoint ID; what was pending for it is cancelled, its log kept."""
    now = clock.now()
    with app_of(ctx).db().transaction() as conn:
        endpoint = outbound_webhooks.get_endpoint(conn, endpoint_id)
        cancelled = outbound_webhooks.remove_endpoint(conn, endpoint_id, now)
        audit.record(conn, actor=audit.cli_actor(), action="webhook.remove", now=now,
                     target=f"webhook-endpoint:{endpoint_id}", address="cli",
                     detail={"url": _where(endpoint.url), "cancelled": cancelled})
    click.echo(f"endpoint {endpoint_id} removed ({cancelled} pending deliveries cancelled).")


@webhooks.command("enable")
@click.argument("endpoint_id", metavar="ID", type=int)
@click.pass_context
def enable_cmd(ctx: click.Context, endpoint_id: int) -> None:
    """Send to endpoint ID again after it answered 410 Gone (from the next event on)."""
    now = clock.now()
    with app_of(ctx).db().transaction() as conn:
        endpoint = outbound_webhooks.enable_endpoint(conn, endpoint_id, now)
        audit.record(conn, actor=audit.cli_actor(), action="webhook.enable", now=now,
                     target=f"webhook-endpoint:{endpoint_id}", address="cli",
                     detail={"url": _where(endpoint.url)})
    click.echo(f"endpoint {endpoint_id} enabled.")


@webhooks.command("log")
@click.option("--endpoint", "endpoint_id", type=int, metavar="ID", help="Only this endpoint.")
@click.option("--limit", type=click.IntRange(min=1), help="Only the latest N attempts.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (one list).")
@click.pass_context
def log_cmd(ctx: click.Context, endpoint_id: int | None, limit: int | None,
            as_json: bool) -> None:
    """Every delivery attempt: when, which event, the answer, the next attempt; then what
    waits."""
    with app_of(ctx).db().transaction() as conn:
        if endpoint_id is not None:
            outbound_webhooks.get_endpoint(conn, endpoint_id)
        attempts = [a.as_dict() for a in delivery.delivery_log(conn, endpoint_id, limit)]
        waiting = delivery.pending(conn, endpoint_id)
    if as_json:
        echo_json(attempts)
        return
    if not attempts and not waiting:
        click.echo("No webhook deliveries yet.")
        return
    for a in attempts:
        answer = f"HTTP {a['status_code']}" if a["status_code"] is not None else "no answer"
        line = (f"{a['at']}  endpoint {a['endpoint']}  {a['type']}  {a['message_id']}  "
                f"attempt {a['attempt']}: {a['outcome']} ({answer}, {a['duration_ms']} ms)")
        if a["outcome"] != "delivered" and a["error"]:
            line += f" — {a['error']}"
        if a["next_attempt_at"]:
            line += f"; next attempt {a['next_attempt_at']}"
        click.echo(line)
    if waiting:
        click.echo(f"{len(waiting)} pending: " + ", ".join(
            f"{w['type']} {w['message_id']} to endpoint {w['endpoint']} at "
            f"{w['next_attempt_at']}" for w in waiting[:10]) + (" …" if len(waiting) > 10
                                                                else ""))


@webhooks.command("test")
@click.argument("endpoint_id", metavar="ID", type=int)
@click.pass_context
def test_cmd(ctx: click.Context, endpoint_id: int) -> None:
    """Send a signed `webhook.test` event to endpoint ID now and show the answer."""
    app = app_of(ctx)
    now = clock.now()
    with app.db().transaction() as conn:
        outbound_webhooks.get_endpoint(conn, endpoint_id)
        message_id = outbound_webhooks.emit(conn, outbound_webhooks.TEST_EVENT, now,
                                            {"endpoint_id": endpoint_id},
                                            endpoints=[endpoint_id])
    delivery.deliver_due(app.db())
    with app.db().transaction() as conn:
        tried = [a for a in delivery.delivery_log(conn, endpoint_id)
                 if a.message_id == message_id]
    if not tried:
        click.echo(f"{message_id} is queued (another delivery to the endpoint was in the way).")
        return
    last = tried[-1]
    if last.outcome == "delivered":
        click.echo(f"{message_id} delivered: HTTP {last.status_code} in {last.duration_ms} ms.")
        return
    then = f"; retried at {last.next_attempt_at.isoformat()}" if last.next_attempt_at else ""
    raise click.ClickException(f"{message_id} not delivered: {last.error}{then}")


@webhooks.command("deliver")
@click.option("--json", "as_json", is_flag=True, help="Print the counts as JSON.")
@click.pass_context
def deliver_cmd(ctx: click.Context, as_json: bool) -> None:
    """Deliver what is due now (the daemon does this on its own; `run --once` does too)."""
    stats = delivery.deliver_due(app_of(ctx).db())
    if as_json:
        echo_json(stats.as_dict())
        return
    click.echo(f"webhooks: {stats.delivered} delivered, {stats.retried} to retry, "
               f"{stats.failed} failed.")

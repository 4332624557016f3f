"""`touchpoint api-keys`: keys of the REST API (create, list, revoke), each audited."""

from __future__ import annotations

import click

from engine import audit, clock
from engine.api import keys
from engine.cli.common import app_of, echo_json
from engine.cli.root import cli as _cli


@_cli.group("api-keys")
def api_keys_group() -> None:
    """Keys EMR integrations use for the REST API (Authorization: Bearer KEY)."""


@api_keys_group.command("create")
@click.argument("name")
@click.option("--scope", "scope", required=True, metavar="SCOPES",
              help=f"Comma-separated: {', '.join(keys.SCOPES)} (write:records: PUT and DELETE "
              "records; read:log: GET touch points).")
@click.pass_context
def create_cmd(ctx: click.Context, name: str, scope: str) -> None:
    """Make a key named NAME and print it, once: only its hash is kept."""
    scopes = keys.parse_scopes(scope)
    app = app_of(ctx)
    now = clock.now()
    with app.db().transaction() as conn:
        key = keys.create(conn, name, scopes, now)
        audit.record(conn, actor=audit.cli_actor(), action="api_key.create", now=now,
                     target=f"api-key:{name}", address="cli",
                     detail={"scopes": sorted(scopes)})
    click.echo(key)
    click.echo(f"Store this key now (e.g. in your EMR integration's secret store): it is shown "
               f"only this once. Scopes: {', '.join(sorted(scopes))}.", err=True)


@api_keys_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON (one list).")
@click.pass_context
def list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every key: name, scopes, created, last used, revoked (never the key itself)."""
    with app_of(ctx).db().transaction() as conn:
        found = [key.as_dict() for key in keys.all_keys(conn)]
    if as_json:
        echo_json(found)
        return
    if not found:
        click.echo("No API keys — make one with `touchpoint api-keys create NAME --scope "
                   "write:records,read:log`.")
        return
    click.echo(f"{'name':<24} {'scopes':<26} {'created':<17} {'last used':<17} revoked")
    for key in found:
        click.echo(f"{key['name']:<24} {','.join(key['scopes']):<26} "
                   f"{_short(key['created_at']):<17} {_short(key['last_used_at']):<17} "
                   f"{_short(key['revoked_at'])}")


def _short(value: str | None) -> str:
    return value[:16].replace("T", " ") if value else "-"


@api_keys_group.command("revoke")
@click.argument("name")
@click.pass_context
def revoke_cmd(ctx: click.Context, name: str) -> None:
    """Revoke the key NAME: its next request gets 401."""
    now = clock.now()
    with app_of(ctx).db().transaction() as conn:
        keys.revoke(conn, name, now)
        audit.record(conn, actor=audit.cli_actor(), action="api_key.revoke", now=now,
                     target=f"api-key:{name}", address="cli")
    click.echo(f"Revoked the API key {name}.")

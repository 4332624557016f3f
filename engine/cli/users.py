"""`touchpoint users`: the practice's staff accounts for the console."""

from __future__ import annotations

import sys

import click

from engine import audit, clock, staff
from engine.cli.common import app_of, echo_json
from engine.cli.root import cli as _cli
from engine.errors import UserError


@_cli.group("users", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def users_cmd(ctx: click.Context, as_json: bool) -> None:
    """Staff who sign in to the console, and their roles (owner, manager, front-desk,
    viewer). Without a subcommand: the list."""
    if ctx.invoked_subcommand is None:
        ctx.invoke(users_list_cmd, as_json=as_json)


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    value: str = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return value


@users_cmd.command("add")
@click.argument("email")
@click.option("--role", type=click.Choice(staff.ROLES), required=True,
              help="owner: users and settings; manager: journeys and templates; front-desk: "
                   "inbox, cases, patients, log; viewer: read-only, masked.")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input (for scripts).")
@click.option("--phone", metavar="PHONE", help="Their own number, for test texts.")
@click.pass_context
def users_add_cmd(ctx: click.Context, email: str, role: str, password_stdin: bool,
                  phone: str | None) -> None:
    """Create a staff account (the password is asked for, or read with --password-stdin)."""
    password = _password(password_stdin)
    app = app_of(ctx)
    now = clock.now()
    with app.db().transaction() as conn:
        user = staff.add_user(conn, email, role, password, now, phone,
                              app.settings().phone_region)
        audit.record(conn, actor=audit.cli_actor(), action="users.add", now=now,
                     target=f"staff:{user.email}", address="cli", detail={"role": role})
    click.echo(f"{user.email} can now sign in as {role}.")


@users_cmd.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def users_list_cmd(ctx: click.Context, as_json: bool) -> None:
    """Every staff account, its role and whether it is disabled."""
    with app_of(ctx).db().transaction() as conn:
        found = staff.list_users(conn)
    if as_json:
        echo_json([user.as_dict() for user in found])
        return
    if not found:
        click.echo("No staff accounts yet — `touchpoint users add EMAIL --role owner` creates "
                   "the first.")
        return
    for user in found:
        state = f"disabled {user.disabled_at:%Y-%m-%d}" if user.disabled_at else "active"
        click.echo(f"{user.email:40} {user.role:11} {state}")


@users_cmd.command("disable")
@click.argument("email")
@click.pass_context
def users_disable_cmd(ctx: click.Context, email: str) -> None:
    """Stop an account from signing in (its history stays in the audit log)."""
    now = clock.now()
    with app_of(ctx).db().transaction() as conn:
        changed = staff.disable_user(conn, email, now)
        if changed:
            audit.record(conn, actor=audit.cli_actor(), action="users.disable", now=now,
                         target=f"staff:{email.strip().lower()}", address="cli")
    click.echo(f"{email.strip().lower()} is disabled." if changed
               else f"{email.strip().lower()} was already disabled.")


@users_cmd.command("set-phone")
@click.argument("email")
@click.argument("phone")
@click.pass_context
def users_set_phone_cmd(ctx: click.Context, email: str, phone: str) -> None:
    """The number their test texts go to ("" removes it)."""
    app = app_of(ctx)
    with app.db().transaction() as conn:
        user = staff.set_phone(conn, email, phone, app.settings().phone_region)
        audit.record(conn, actor=audit.cli_actor(), action="users.set-phone", now=clock.now(),
                     target=f"staff:{user.email}", address="cli")
    click.echo(f"{user.email}'s test texts go to {user.phone}." if user.phone
               else f"{user.email} has no phone number now.")


@users_cmd.command("set-password")
@click.argument("email")
@click.option("--password-stdin", is_flag=True,
              help="Read the password from the first line of standard input (for scripts).")
@click.pass_context
def users_set_password_cmd(ctx: click.Context, email: str, password_stdin: bool) -> None:
    """Give an account a new password."""
    app = app_of(ctx)
    with app.db().transaction() as conn:  # (an unknown account is said before the prompt)
        if staff.get_user(conn, email) is None:
            raise UserError(f"there is no staff account for {email.strip().lower()} — "
                            "`touchpoint users list` shows them")
    password = _password(password_stdin)
    now = clock.now()
    with app.db().transaction() as conn:
        user = staff.set_password(conn, email, password, now)
        audit.record(conn, actor=audit.cli_actor(), action="users.set-password", now=now,
                     target=f"staff:{user.email}", address="cli")
    click.echo(f"{user.email} has a new password.")

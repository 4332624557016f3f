"""`touchpoint import hl7 FILE`: apply a file of HL7 v2 messages, one result per message."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from engine.cli.common import app_of, echo_json
from engine.cli.imports import import_
from engine.errors import ImportFileError
from engine.hl7.batch import split_messages
from engine.hl7.receive import Receiver, decode


@import_.command("hl7")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one result per message as JSON.")
@click.pass_context
def import_hl7_cmd(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Apply FILE of HL7 v2 messages (SIU, ADT) as the MLLP listener would.

    Messages may be MLLP-framed, separated by blank lines or each start at MSH; batch
    headers (FHS/BHS) are skipped. Each message is applied whole or not at all, once per
    control id. Prints control id, type, AA/AE/AR and the reason; exits 3 if any was not
    applied.
    """
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise ImportFileError(f"{file}: file not found") from None
    except OSError as exc:
        raise ImportFileError(f"{file}: cannot read it ({exc.strerror})") from None
    messages = split_messages(decode(data))
    if not messages:
        raise ImportFileError(f"{file}: no HL7 messages in it (each starts with MSH)")
    app = app_of(ctx)
    receiver = Receiver(app.db(), app.settings())
    results = []
    for number, message in enumerate(messages, start=1):
        outcome = receiver.receive(message, source=f"file:{file.name}")
        results.append({"message": number, **outcome.as_dict()})
    if as_json:
        echo_json(results)
    else:
        for result in results:
            again = " (already applied)" if result["duplicate"] else ""
            reason = f"  {result['reason']}" if result["reason"] else ""
            click.echo(f"{result['message']:>4}  {result['control_id'] or '-':<20} "
                       f"{result['message_type'] or '-':<8} {result['ack']}{again}{reason}")
        applied = sum(1 for r in results if r["ack"] == "AA")
        click.echo(f"{file.name}: {len(results)} messages, {applied} applied, "
                   f"{len(results) - applied} not applied.")
    if any(r["ack"] != "AA" for r in results):
        sys.exit(3)

"""`joinbridge lead|fire|value`: /lead, /fire and /value for scripts (a CRM, a
payment webhook) on the bridge's host.

`lead` reads AdTarget directly and the database read-only. `fire` and `value`
validate, check AdTarget's record of the lead, and write an outbox row; the
running bridge's courier sends it within a few seconds (or whenever it next
runs), with the row's own Idempotency-Key.

`--idempotency-key KEY` (a payment id, say) makes a retried webhook harmless: a
repeat with the same key queues nothing and says "already queued".

Exit status: 0 queued, already queued (or shown); 1 AdTarget refused or could not be asked
(`lead`), or the database could not be used (locked: try again), with one line
saying so; 2 bad arguments, settings or no database.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys

import psycopg

from bot.adtarget.client import AdTargetClient
from bot.factory import open_store
from bot.followups.lead import (
    EVENTS,
    FIRE_ARGS,
    LEAD_ARGS,
    VALUE_ARGS,
    LeadFollowUps,
    parse_fire,
    parse_lead,
    parse_value,
)
from bot.followups.lead_view import describe_outcome, render_lookup
from bot.followups.rows import InvalidFollowUp, check_idempotency_key
from bot.settings import Settings
from storage import channels
from storage.db import Database

EXIT_OK = 0
EXIT_ADTARGET = 1
EXIT_TRY_AGAIN = 1  # the database could not be used just now (locked, disk full)
EXIT_USAGE = 2

_ARGS = {"lead": LEAD_ARGS, "fire": FIRE_ARGS, "value": VALUE_ARGS}


def add_arguments(parser: argparse.ArgumentParser, command: str) -> None:
    # Plain strings here: the checks (and their messages) are the ones /fire uses.
    parser.add_argument("telegram_user_id", help="the person's numeric Telegram user id")
    if command == "fire":
        parser.add_argument("event", help=EVENTS.replace("|", ", "))
        parser.add_argument("value", nargs="?", help="the event's value, like 19.99")
        parser.add_argument("currency", nargs="?", help="ISO 4217 code, like EUR")
    elif command == "value":
        parser.add_argument("conversion_id", help="AdTarget's conversion id, as `lead` shows it")
        parser.add_argument("value", help="the value, > 0, like 19.99")
        parser.add_argument("currency", help="ISO 4217 code, like EUR")
    if command in ("fire", "value"):
        parser.add_argument(
            "--idempotency-key",
            metavar="KEY",
            help="your own key, like the payment id (1-128 printable ASCII characters):"
            " a repeat with the same key queues nothing",
        )


def _words(args: argparse.Namespace) -> list[str]:
    names = {
        "lead": ("telegram_user_id",),
        "fire": ("telegram_user_id", "event", "value", "currency"),
        "value": ("telegram_user_id", "conversion_id", "value", "currency"),
    }[args.command]
    return [getattr(args, name) for name in names if getattr(args, name) is not None]


def _say(command: str, text: str) -> None:
    print(f"joinbridge {command}: {text}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from bot.cli.run import load_settings  # exits 2 with one line when a setting is bad

    settings = load_settings()
    command: str = args.command
    words = _words(args)
    key: str | None = getattr(args, "idempotency_key", None)
    try:
        if command == "lead":
            parse_lead(words)
        elif command == "fire":
            parse_fire(words)
        else:
            parse_value(words)
        if key is not None:
            check_idempotency_key(key)
    except InvalidFollowUp as error:
        _say(command, f"{error} (usage: joinbridge {command} {_ARGS[command]})")
        return EXIT_USAGE
    database = settings.database_path
    if settings.database_url is None and not database.is_file():
        _say(command, f"database: {database} does not exist (DATABASE_PATH; start the bridge once)")
        return EXIT_USAGE
    where = "DATABASE_URL" if settings.database_url is not None else str(database)
    try:
        return asyncio.run(_run(settings, command, words, key))
    except (sqlite3.Error, psycopg.Error, OSError) as error:
        # "database is locked" and the like pass: 1 tells a script to try again,
        # where 2 (bad arguments) would tell it not to.
        _say(command, f"database {where}: {error}")
        return EXIT_TRY_AGAIN


async def _run(settings: Settings, command: str, words: list[str], key: str | None) -> int:
    client = AdTargetClient(
        settings.adtarget_api_url, settings.adtarget_api_key, timeout=settings.adtarget_timeout
    )
    try:
        if command == "lead":
            return await _lead(client, settings, parse_lead(words))
        db = await open_store(settings)
        try:
            follow_ups = LeadFollowUps(db, client)
            if command == "fire":
                fire = parse_fire(words)
                outcome = await follow_ups.fire(fire, idempotency_key=key)
                what = " ".join(words[1:2]) + f" for user {fire.user}"
            else:
                value = parse_value(words)
                outcome = await follow_ups.value(value, idempotency_key=key)
                amount = f"{value.request.value:g} {value.request.currency}"
                what = f"Value {amount} for conversion {value.conversion_id} of user {value.user}"
        finally:
            await db.close()
    finally:
        await client.aclose()
    if outcome.queued is None:
        _say(command, describe_outcome(outcome, what, html_mode=False))
        return EXIT_ADTARGET
    line = describe_outcome(outcome, what, html_mode=False)
    print(f"{line} Idempotency-Key: {outcome.queued.idempotency_key}")
    return EXIT_OK


async def _lead(client: AdTargetClient, settings: Settings, user: int) -> int:
    db: Database = await open_store(settings, readonly=True)
    try:
        lookup = await LeadFollowUps(db, client).look_up(user)
        known = await channels.list_all(db)
    finally:
        await db.close()
    print(render_lookup(lookup, known, html_mode=False))
    if lookup.problem is not None:
        _say("lead", lookup.problem)
        return EXIT_ADTARGET
    return EXIT_OK

"""Where the SQL of the two engines differs: the one place.

Storage modules write SQLite's flavour of SQL (`?` and `:name` placeholders,
`INDEXED BY`, SQLite's DDL). `SQLITE` runs it as written. `POSTGRES` rewrites a
statement for PostgreSQL once per statement text (`translate`, cached):
placeholders become psycopg's `%s` / `%(name)s`, `INDEXED BY <index>` goes (the
planner picks its own indexes), and a lone `%` is doubled for psycopg. Migrations
go through `ddl` as well: SQLite's column types become PostgreSQL's.

What cannot be rewritten mechanically is a snippet per engine here, used by name
from the storage modules (`tx.dialect.append_error`, `json_text`, `skip_locked`,
the catalog queries). Everything else in storage/ is written portably, in SQL both engines
read the same way (`coalesce(sum(x), 0)` rather than `total(x)`, `CASE` rather
than the scalar `max(a, b)`, an alias on every subquery in FROM).

Migrations: one numbered set serves both engines. A statement only one engine
needs is preceded by a comment line `-- sqlite only` or `-- postgres only`
(`applies`). SQLite's triggers of migrations 006 and 014 are SQLite-only: they
move the stay sweep's cursor back when the newest join is deleted, because
SQLite hands the freed id (max(id) + 1) to the next join; PostgreSQL's identity
columns never hand out an id twice, so nothing there needs moving back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

# The marker lines of migrations (see the module's docstring).
ONLY_SQLITE = "-- sqlite only"
ONLY_POSTGRES = "-- postgres only"


class Dialect:
    """SQLite's: statements run as written."""

    name = "sqlite"

    def translate(self, sql: str) -> str:
        """A statement as this engine runs it."""
        return sql

    def ddl(self, sql: str) -> str:
        """A migration's statement as this engine runs it."""
        return sql

    def applies(self, marker: str | None) -> bool:
        """Whether a migration statement under `marker` (ONLY_…, or None) runs here."""
        return marker in (None, ONLY_SQLITE)

    # The outbox row's error list with `?` (a JSON entry) appended, its oldest
    # entry dropped once it holds `?` (the cap): a SET term; params (cap, entry).
    append_error = (
        "errors = json_insert(CASE WHEN json_array_length(errors) >= ?"
        " THEN json_remove(errors, '$[0]') ELSE errors END, '$[#]', json(?))"
    )

    def json_text(self, column: str, keys: Sequence[str]) -> str:
        """The value at `keys` in the JSON text of `column`, as text (a number too)."""
        path = "$" + "".join(f".{key}" for key in keys)
        return f"CAST(json_extract({column}, '{path}') AS TEXT)"

    def json_without(self, column: str, keys: Sequence[str]) -> str:
        """The JSON object in `column` without the top-level `keys`, as text."""
        paths = ", ".join(f"'$.\"{key}\"'" for key in keys)
        return f"json_remove({column}, {paths})"

    # Appended to a SELECT that picks rows to claim (the outbox's due rows, a pool
    # link): the rows it returns are locked, and rows another transaction holds
    # locked are passed over rather than waited for. SQLite has one writer at a
    # time (BEGIN IMMEDIATE), so nothing there is locked by anyone else.
    skip_locked = ""

    # The catalog, in the same shape on both engines. tables: `name` of every table
    # of ours (not the engine's own); columns: `name` of table `?`'s columns;
    # references: (`column`, `parent` table) of table `?`'s foreign keys.
    tables = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    columns = "SELECT name FROM pragma_table_info(?)"
    references = 'SELECT "from" AS "column", "table" AS parent FROM pragma_foreign_key_list(?)'

    # The engine's version, one row of text (doctor).
    server_version = "SELECT 'SQLite ' || sqlite_version()"

    def quick_check(self, limit: int) -> str:
        """A soundness check of the stored data: rows of text, 'ok' alone when sound."""
        return f"PRAGMA quick_check({int(limit)})"


class PostgresDialect(Dialect):
    name = "postgres"

    def translate(self, sql: str) -> str:
        return _translate(sql)

    def ddl(self, sql: str) -> str:
        return _translate(_ddl(sql))

    def applies(self, marker: str | None) -> bool:
        return marker in (None, ONLY_POSTGRES)

    append_error = (
        "errors = (CASE WHEN jsonb_array_length(errors::jsonb) >= ?"
        " THEN errors::jsonb - 0 ELSE errors::jsonb END || jsonb_build_array(?::jsonb))::text"
    )

    skip_locked = " FOR UPDATE SKIP LOCKED"

    def json_text(self, column: str, keys: Sequence[str]) -> str:
        return f"({column}::jsonb #>> '{{{','.join(keys)}}}')"

    def json_without(self, column: str, keys: Sequence[str]) -> str:
        names = ", ".join(f"'{key}'" for key in keys)
        return f"({column}::jsonb - ARRAY[{names}]::text[])::text"

    tables = (
        "SELECT table_name AS name FROM information_schema.tables"
        " WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
    )
    columns = (
        "SELECT column_name AS name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = ?"
    )
    references = (
        "SELECT a.attname AS column, p.relname AS parent FROM pg_constraint c"
        " JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class p ON p.oid = c.confrelid"
        " JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)"
        " WHERE c.contype = 'f' AND t.relname = ?"
        " AND t.relnamespace = current_schema()::regnamespace"
    )

    server_version = "SELECT 'PostgreSQL ' || current_setting('server_version')"

    def quick_check(self, limit: int) -> str:
        # The server checks its own pages as it reads them (and data checksums,
        # when the cluster has them on); there is no file of ours to look at.
        return "SELECT 'ok'"


SQLITE = Dialect()
POSTGRES = PostgresDialect()

# Pieces of a statement the translation must step over as they are: string
# literals, quoted names, comments. The rest is scanned for placeholders.
_LITERAL = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/", re.DOTALL)
_CODE = re.compile(r"::|:([A-Za-z_][A-Za-z0-9_]*)|\?|%|\bINDEXED\s+BY\s+\w+\s*", re.IGNORECASE)


def _code(match: re.Match[str]) -> str:
    text = match.group(0)
    if text == "::":
        return text  # a cast, not a name
    if match.group(1):
        return f"%({match.group(1)})s"
    if text == "?":
        return "%s"
    if text == "%":
        return "%%"
    return ""  # INDEXED BY <index>


@lru_cache(maxsize=1024)
def _translate(sql: str) -> str:
    out: list[str] = []
    at = 0
    for literal in _LITERAL.finditer(sql):
        out.append(_CODE.sub(_code, sql[at : literal.start()]))
        # psycopg reads `%` everywhere, even inside a literal or a comment.
        out.append(literal.group(0).replace("%", "%%"))
        at = literal.end()
    out.append(_CODE.sub(_code, sql[at:]))
    return "".join(out)


# SQLite's DDL for PostgreSQL. A rowid alias (INTEGER PRIMARY KEY) numbers itself:
# an identity column, BY DEFAULT so that an explicit id is taken as given (channels'
# Telegram ids, update ids); its sequence then does not move (see storage.postgres).
# Every INTEGER is BIGINT: Telegram's ids exceed 32 bits. 0/1 flags stay integers.
_DDL = (
    (
        re.compile(r"\bINTEGER\s+PRIMARY\s+KEY(\s+AUTOINCREMENT)?\b", re.IGNORECASE),
        "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    ),
    (re.compile(r"\bINTEGER\b", re.IGNORECASE), "BIGINT"),
    (re.compile(r"\bREAL\b", re.IGNORECASE), "DOUBLE PRECISION"),
)


def _ddl(sql: str) -> str:
    out: list[str] = []
    at = 0
    for literal in _LITERAL.finditer(sql):
        out.append(_ddl_code(sql[at : literal.start()]))
        out.append(literal.group(0))
        at = literal.end()
    out.append(_ddl_code(sql[at:]))
    return "".join(out)


def _ddl_code(code: str) -> str:
    for pattern, replacement in _DDL:
        code = pattern.sub(replacement, code)
    return code

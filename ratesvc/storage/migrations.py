"""The ledger's schema, one numbered migration at a time, in each engine's words.

A database records the migrations it ran in ``schema_version``; at start-up it is moved forward
from there, each migration in its own transaction, once — SQLite under ``BEGIN IMMEDIATE`` (one
writer), PostgreSQL under a transaction-scoped advisory lock, so replicas starting together wait
for the first one to migrate and then find nothing left to do (see the engines).

Both lists end at the same version with the same tables, columns and indexes
(``tests/test_storage_engines.py`` compares them), written in each dialect: BLOB/BYTEA, SQLite's
``AUTOINCREMENT`` as an identity column. Two differences are deliberate:

* ``rowid``: every SQLite table has one (insertion order, which pages and queues follow); on
  PostgreSQL the tables ordered by it (``purchases``, ``events``) carry an identity column of that
  name, so the queries read the same.
* ``casefold(text)``: SQLite gets Python's ``str.casefold`` at every connection; PostgreSQL 15
  has no case folding (``lower()`` is not it: ``'ß'`` stays ``'ß'``; in the ``C`` locale it folds
  ASCII only), so migration 5 creates a SQL function from Python's Unicode case-folding table.

The SQLite scripts 1-5 are the history every existing ledger went through: they are never
edited, only appended to. PostgreSQL ledgers start at this code, so their 1-5 are the same
schema without the data repairs SQLite's 3 and 5 made to rows older versions had written.
"""

from __future__ import annotations

import functools
import unicodedata

SQLITE_MIGRATIONS: list[str] = [
    # 1: purchases, their packages, the write-back outbox
    """
    CREATE TABLE purchases (
        label_id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        idem_key TEXT,
        request_hash TEXT NOT NULL,
        plan BLOB NOT NULL,
        status TEXT NOT NULL,
        detail TEXT,
        sale_id TEXT,
        task_id TEXT,
        write_back_state TEXT NOT NULL,
        write_back_attempts INTEGER NOT NULL DEFAULT 0,
        write_back_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        voided_at TEXT
    );
    CREATE UNIQUE INDEX purchases_idem ON purchases(account, idem_key) WHERE idem_key IS NOT NULL;
    CREATE INDEX purchases_sale ON purchases(account, sale_id);
    CREATE TABLE packages (
        label_id TEXT NOT NULL REFERENCES purchases(label_id),
        n INTEGER NOT NULL,
        box TEXT,
        purchase_key TEXT NOT NULL UNIQUE,
        state TEXT NOT NULL,
        attempt_at TEXT,
        shipment_id INTEGER,
        tracking_number TEXT,
        cost TEXT,
        insurance_cost TEXT,
        pdf_path TEXT,
        PRIMARY KEY (label_id, n)
    );
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        label_id TEXT NOT NULL REFERENCES purchases(label_id),
        kind TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at TEXT NOT NULL,
        last_error TEXT,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX outbox_due ON outbox(state, next_at);
    """,
    # 2: automation events (Cin7 Core webhooks and what the poller found)
    """
    CREATE TABLE events (
        event_id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        source TEXT NOT NULL,
        event_type TEXT NOT NULL,
        dedup_key TEXT NOT NULL,
        sale_id TEXT,
        task_id TEXT,
        order_number TEXT,
        sale_updated TEXT,
        status TEXT NOT NULL,
        reason TEXT,
        label_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at TEXT NOT NULL,
        payload BLOB NOT NULL,
        received_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE UNIQUE INDEX events_dedup ON events(account, dedup_key);
    CREATE INDEX events_due ON events(status, next_at);
    CREATE INDEX events_sale ON events(account, sale_id);
    """,
    # 3: a sale label claims its fulfilment as well as the client's key; purchase attempts are
    # durable; a package "buying" when the process stopped, or tried and left "pending" on a
    # live label (the old time-out on a last attempt), has an unknown outcome
    """
    ALTER TABLE purchases ADD COLUMN fulfilment_key TEXT;
    UPDATE purchases SET fulfilment_key = 'sale:' || lower(sale_id) || ':' || lower(task_id)
        WHERE sale_id IS NOT NULL AND task_id IS NOT NULL
          AND status NOT IN ('voided', 'failed')
          AND rowid = (SELECT MAX(p.rowid) FROM purchases p
                       WHERE p.account = purchases.account
                         AND lower(p.sale_id) = lower(purchases.sale_id)
                         AND lower(p.task_id) = lower(purchases.task_id)
                         AND p.status NOT IN ('voided', 'failed'));
    UPDATE purchases SET idem_key = NULL WHERE idem_key LIKE 'sale:%';
    CREATE UNIQUE INDEX purchases_fulfilment ON purchases(account, fulfilment_key)
        WHERE fulfilment_key IS NOT NULL;
    ALTER TABLE packages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    UPDATE packages SET state = 'unknown' WHERE state = 'buying'
        OR (state = 'pending' AND attempt_at IS NOT NULL AND label_id IN
            (SELECT label_id FROM purchases WHERE status NOT IN ('failed', 'voided')));
    CREATE INDEX outbox_label ON outbox(label_id);
    CREATE INDEX outbox_open ON outbox(state, id);
    CREATE INDEX purchases_status ON purchases(status);
    CREATE INDEX purchases_request ON purchases(account, request_hash);
    """,
    # 4: the customs form ShipStation returns for an international package, kept like its label
    """
    ALTER TABLE packages ADD COLUMN customs_pdf_path TEXT;
    """,
    # 5: the sale's order number, so a person finds a label by it
    """
    ALTER TABLE purchases ADD COLUMN order_number TEXT;
    UPDATE purchases SET order_number = (
        SELECT e.order_number FROM events e WHERE e.account = purchases.account
        AND lower(e.sale_id) = lower(purchases.sale_id) AND e.order_number IS NOT NULL
        ORDER BY e.rowid DESC LIMIT 1
    ) WHERE sale_id IS NOT NULL;
    """,
    # 6: label and customs PDFs in the ledger itself (any replica serves them; retention forgets
    # them with the rest); packages bought before keep their file paths
    """
    CREATE TABLE documents (
        label_id TEXT NOT NULL,
        n INTEGER NOT NULL,
        kind TEXT NOT NULL,
        content BLOB NOT NULL,
        created_at TEXT NOT NULL,
        PRIMARY KEY (label_id, n, kind),
        FOREIGN KEY (label_id, n) REFERENCES packages(label_id, n)
    );
    """,
    # 7: work claimed, not assumed: named leases (a purchase, an account's poller) and the owner
    # and lease expiry of a claimed outbox job or automation event (seconds since the epoch on
    # the database's clock; see Ledger.acquire_lease). A job running before has none: expired.
    """
    CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL,
        expires_at REAL NOT NULL
    );
    ALTER TABLE outbox ADD COLUMN owner TEXT;
    ALTER TABLE outbox ADD COLUMN lease_until REAL;
    ALTER TABLE events ADD COLUMN owner TEXT;
    ALTER TABLE events ADD COLUMN lease_until REAL;
    """,
    # 8: retention walks settled events and outbox jobs in the order they were last changed
    # (Ledger.purge): batch after batch along these, never scanning again what it deleted.
    """
    CREATE INDEX events_settled ON events(status, updated_at, event_id);
    CREATE INDEX outbox_settled ON outbox(state, updated_at, id);
    """,
]


def _postgresql_migrations() -> list[str]:
    return [
        # 1: purchases, their packages, the write-back outbox
        """
        CREATE TABLE purchases (
            label_id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            idem_key TEXT,
            request_hash TEXT NOT NULL,
            plan BYTEA NOT NULL,
            status TEXT NOT NULL,
            detail TEXT,
            sale_id TEXT,
            task_id TEXT,
            write_back_state TEXT NOT NULL,
            write_back_attempts INTEGER NOT NULL DEFAULT 0,
            write_back_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            voided_at TEXT,
            rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
        );
        CREATE UNIQUE INDEX purchases_idem ON purchases(account, idem_key)
            WHERE idem_key IS NOT NULL;
        CREATE INDEX purchases_sale ON purchases(account, sale_id);
        CREATE TABLE packages (
            label_id TEXT NOT NULL REFERENCES purchases(label_id),
            n INTEGER NOT NULL,
            box TEXT,
            purchase_key TEXT NOT NULL UNIQUE,
            state TEXT NOT NULL,
            attempt_at TEXT,
            shipment_id BIGINT,
            tracking_number TEXT,
            cost TEXT,
            insurance_cost TEXT,
            pdf_path TEXT,
            PRIMARY KEY (label_id, n)
        );
        CREATE TABLE outbox (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            label_id TEXT NOT NULL REFERENCES purchases(label_id),
            kind TEXT NOT NULL,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at TEXT NOT NULL,
            last_error TEXT,
            created_at TEXT NOT NULL,
            updated_at TEXT NOT NULL
        );
        CREATE INDEX outbox_due ON outbox(state, next_at);
        """,
        # 2: automation events (Cin7 Core webhooks and what the poller found)
        """
        CREATE TABLE events (
            event_id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            source TEXT NOT NULL,
            event_type TEXT NOT NULL,
            dedup_key TEXT NOT NULL,
            sale_id TEXT,
            task_id TEXT,
            order_number TEXT,
            sale_updated TEXT,
            status TEXT NOT NULL,
            reason TEXT,
            label_id TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at TEXT NOT NULL,
            payload BYTEA NOT NULL,
            received_at TEXT NOT NULL,
            updated_at TEXT NOT NULL,
            rowid BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
        );
        CREATE UNIQUE INDEX events_dedup ON events(account, dedup_key);
        CREATE INDEX events_due ON events(status, next_at);
        CREATE INDEX events_sale ON events(account, sale_id);
        """,
        # 3: a sale label claims its fulfilment as well as the client's key; purchase attempts
        # are durable
        """
        ALTER TABLE purchases ADD COLUMN fulfilment_key TEXT;
        CREATE UNIQUE INDEX purchases_fulfilment ON purchases(account, fulfilment_key)
            WHERE fulfilment_key IS NOT NULL;
        ALTER TABLE packages ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX outbox_label ON outbox(label_id);
        CREATE INDEX outbox_open ON outbox(state, id);
        CREATE INDEX purchases_status ON purchases(status);
        CREATE INDEX purchases_request ON purchases(account, request_hash);
        """,
        # 4: the customs form ShipStation returns for an international package
        """
        ALTER TABLE packages ADD COLUMN customs_pdf_path TEXT;
        """,
        # 5: the sale's order number, so a person finds a label by it — with casefold()
        "ALTER TABLE purchases ADD COLUMN order_number TEXT;\n" + casefold_function(),
        # 6: label and customs PDFs in the ledger itself
        """
        CREATE TABLE documents (
            label_id TEXT NOT NULL,
            n INTEGER NOT NULL,
            kind TEXT NOT NULL,
            content BYTEA NOT NULL,
            created_at TEXT NOT NULL,
            PRIMARY KEY (label_id, n, kind),
            FOREIGN KEY (label_id, n) REFERENCES packages(label_id, n)
        );
        """,
        # 7: named leases; the owner and lease expiry of claimed outbox jobs and events
        """
        CREATE TABLE leases (
            name TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL
        );
        ALTER TABLE outbox ADD COLUMN owner TEXT;
        ALTER TABLE outbox ADD COLUMN lease_until DOUBLE PRECISION;
        ALTER TABLE events ADD COLUMN owner TEXT;
        ALTER TABLE events ADD COLUMN lease_until DOUBLE PRECISION;
        """,
        # 8: retention walks settled events and outbox jobs in the order they were last changed
        # (Ledger.purge): batch after batch along these, never scanning again what it deleted.
        """
        CREATE INDEX events_settled ON events(status, updated_at, event_id);
        CREATE INDEX outbox_settled ON outbox(state, updated_at, id);
        """,
    ]


@functools.cache
def postgresql_migrations() -> tuple[str, ...]:
    """PostgreSQL's scripts (built when first needed: the case-folding table takes a moment)."""
    return tuple(_postgresql_migrations())


SCHEMA_VERSION = len(SQLITE_MIGRATIONS)


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def casefold_function() -> str:
    """``CREATE FUNCTION casefold(text)``: Python's ``str.casefold`` in SQL, independent of the
    database's locale — ``translate()`` for the characters that fold to one character, nested
    ``replace()`` for the hundred or so that fold to several (``ß`` → ``ss``). Folding is per
    character and idempotent, so the two steps do not interfere."""
    single: list[tuple[str, str]] = []
    multiple: list[tuple[str, str]] = []
    for code in range(0x110000):
        char = chr(code)
        if 0xD800 <= code <= 0xDFFF:  # surrogates: never in a PostgreSQL text
            continue
        folded = char.casefold()
        if folded != char:
            (single if len(folded) == 1 else multiple).append((char, folded))
    expression = (
        f"translate(value, {_literal(''.join(c for c, _ in single))}, "
        f"{_literal(''.join(f for _, f in single))})"
    )
    for char, folded in multiple:
        expression = f"replace({expression}, {_literal(char)}, {_literal(folded)})"
    return (
        "CREATE FUNCTION casefold(value TEXT) RETURNS TEXT "
        "LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE "
        f"RETURN {expression};\n"
        "COMMENT ON FUNCTION casefold(TEXT) IS "
        f"'Python str.casefold, Unicode {unicodedata.unidata_version}';\n"
    )

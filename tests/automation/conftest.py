"""The automation tests run on both ledger engines (events, purchases and their outbox are
rows of the ledger): ``make_automated`` as in the label tests, through ``ledger_env``."""

from __future__ import annotations

from tests.labels.conftest import make_automated

__all__ = ["make_automated"]

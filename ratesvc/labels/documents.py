"""A package's label PDF and customs form, wherever they were kept.

Since ledger migration 6 they are rows of the ledger (``documents``), written in the transaction
that records the package bought, so every replica on a shared database serves them. Packages
bought by older versions name a file under the data directory instead (``pdf_path``,
``customs_pdf_path``); those are still read from there until retention forgets them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from ratesvc.storage.ledger import CUSTOMS, LABEL, Ledger, PackageRow

__all__ = ["CUSTOMS", "LABEL", "package_pdf"]


async def package_pdf(
    ledger: Ledger, package: PackageRow, kind: str, *, stored: dict[int, bytes] | None = None
) -> bytes | None:
    """The package's PDF of ``kind`` (:data:`LABEL` or :data:`CUSTOMS`); None when it has none.
    ``stored``: the label's documents of that kind already read. Raises FileNotFoundError when
    an older version's file is gone."""
    in_ledger = package.pdf_stored if kind == LABEL else package.customs_pdf_stored
    if in_ledger:
        content = (
            stored.get(package.n)
            if stored is not None
            else await ledger.document(package.label_id, package.n, kind)
        )
        if content is not None:
            return content
    path = package.pdf_path if kind == LABEL else package.customs_pdf_path
    if path is None:
        return None
    return await asyncio.to_thread(Path(path).read_bytes)

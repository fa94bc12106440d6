"""Every label of a purchase in one PDF, in box order, for printing a whole sale at once.

Only bought packages are printed (a voided or failed box has no label to stick). A label with a
box still being bought is refused (409 ``reconciling``: printing would leave it out unnoticed). A
voided label is refused (409 ``already_voided``: a voided
label must not be stuck on a box); a label with no bought package yet (``purchasing``, or nothing
bought) and a bought package whose PDF is not here (recovered from ShipStation's list, or
forgotten by retention) are 404 ``not_found`` naming what is missing. The PDFs are read from the
ledger in one query (a file for packages older versions bought); the merge (pypdf) runs in a
thread: a sale of many boxes must not stall the event loop.
"""

from __future__ import annotations

import asyncio
import io

import pypdf
from pypdf.errors import PyPdfError

from ratesvc.errors import AlreadyVoided, NotFound, Reconciling
from ratesvc.labels.documents import LABEL, package_pdf
from ratesvc.labels.lifecycle import LabelStatus, PackageState
from ratesvc.storage.ledger import Ledger

_BEING_BOUGHT = (PackageState.PENDING, PackageState.UNKNOWN)


async def merged_label_pdf(ledger: Ledger, label_id: str, account: str) -> bytes:
    row = await ledger.purchase(label_id)
    if row is None or row.account != account:
        raise NotFound(f"no label {label_id}")
    if row.status == LabelStatus.VOIDED:
        raise AlreadyVoided(f"label {label_id} is voided: its labels must not be printed")
    packages = await ledger.packages(label_id)
    buying = next((p for p in packages if p.state in _BEING_BOUGHT), None)
    if buying is not None:  # printing now would silently leave a box out
        raise Reconciling(
            f"package {buying.n} of label {label_id} is still being bought ({buying.state}): "
            "print when every box is bought", label_id=label_id,
        )  # fmt: skip
    bought = [p for p in packages if p.state == PackageState.BOUGHT]
    if not bought:
        raise NotFound(f"label {label_id} has no bought package to print (it is {row.status})")
    missing = next((p for p in bought if not p.has_pdf), None)
    if missing is not None:
        raise NotFound(_gone(missing.n))
    stored = await ledger.documents(label_id, LABEL)
    pdfs: list[tuple[int, bytes]] = []
    for package in bought:
        try:
            content = await package_pdf(ledger, package, LABEL, stored=stored)
        except FileNotFoundError:
            content = None
        if content is None:
            raise NotFound(_gone(package.n))
        pdfs.append((package.n, content))
    return await asyncio.to_thread(_merge, pdfs)


def _gone(n: int) -> str:
    return f"package {n} has no label PDF here: reprint it from ShipStation"


def _merge(pdfs: list[tuple[int, bytes]]) -> bytes:
    writer = pypdf.PdfWriter()
    for n, content in pdfs:
        try:
            writer.append(pypdf.PdfReader(io.BytesIO(content)))
        except (PyPdfError, ValueError) as exc:
            raise NotFound(f"package {n}'s label PDF cannot be read here ({exc}): reprint it "
                           "from ShipStation") from exc  # fmt: skip
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()

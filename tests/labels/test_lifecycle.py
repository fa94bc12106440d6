"""The lifecycle table itself: what can never happen, whatever the code that uses it."""

from __future__ import annotations

from ratesvc.labels.lifecycle import (
    PACKAGE_TRANSITIONS,
    SETTLED,
    TRANSITIONS,
    VOIDABLE,
    LabelStatus,
    PackageState,
    package_sources,
    sources,
)


def _reachable(start: LabelStatus) -> set[LabelStatus]:
    seen, todo = {start}, [start]
    while todo:
        for nxt in TRANSITIONS[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_voided_and_failed_are_terminal_and_everything_else_can_end() -> None:
    assert all(not TRANSITIONS[status] for status in SETTLED)
    assert _reachable(LabelStatus.PURCHASING) == set(LabelStatus)
    assert all(_reachable(status) & SETTLED for status in LabelStatus)


def test_a_label_is_never_voided_while_being_bought_and_never_un_voided() -> None:
    assert LabelStatus.PURCHASING not in VOIDABLE
    assert sources(LabelStatus.VOIDED) == VOIDABLE
    assert LabelStatus.VOIDED not in sources(LabelStatus.COMPLETED)
    assert LabelStatus.VOIDED not in sources(LabelStatus.WRITE_BACK_FAILED)


def test_a_bought_package_is_only_ever_voided_and_an_unknown_one_is_never_skipped() -> None:
    assert PACKAGE_TRANSITIONS[PackageState.BOUGHT] == {PackageState.VOIDED}
    assert package_sources(PackageState.BOUGHT) == {PackageState.UNKNOWN}  # only after a call
    assert PackageState.PENDING not in package_sources(PackageState.VOIDED)
    assert not PACKAGE_TRANSITIONS[PackageState.VOIDED]

"""JSON decoders built once per type and reused (msgspec's fast path)."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_decoders: dict[Any, Any] = {}


def decoder_for(kind: type[T]) -> msgspec.json.Decoder[T]:
    decoder: msgspec.json.Decoder[T] | None = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder

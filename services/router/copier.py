"""The copier: one stream into N identical streams (`copy: {input, to: [a, b]}` -> <stage>.a, <stage>.b).

Needs nothing from the item, so it runs server-side: every entry is XADDed to each branch and acknowledged in
the same script call."""

from __future__ import annotations

from typing import ClassVar

from .base import Router, register


@register
class Copier(Router):
    kind: ClassVar[str] = "copy"
    mode: ClassVar[str] = "all"

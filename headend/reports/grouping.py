"""How the collection report is broken down (light: the command line's options use it)."""

from __future__ import annotations

from enum import StrEnum


class GroupBy(StrEnum):
    """How the report is broken down."""

    CONCENTRATOR = "concentrator"
    REGION = "region"

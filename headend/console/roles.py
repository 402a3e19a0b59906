"""The console's roles and which pages each may see; only the standard library (the command line's options use them)."""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class ConsoleRole(StrEnum):
    """What a console user may see and do."""

    OPERATOR = "operator"  # operator pages
    FIELD_STAFF = "field_staff"  # field pages, on a phone
    VIEWER = "viewer"  # operator pages, read only
    ADMIN = "admin"  # everything


OPERATOR_PAGE_ROLES: Final = frozenset({ConsoleRole.OPERATOR, ConsoleRole.VIEWER, ConsoleRole.ADMIN})
FIELD_PAGE_ROLES: Final = frozenset({ConsoleRole.FIELD_STAFF, ConsoleRole.ADMIN})
ROLE_LABELS: Final = {
    ConsoleRole.OPERATOR: "Operator",
    ConsoleRole.FIELD_STAFF: "Field staff",
    ConsoleRole.VIEWER: "Viewer (read only)",
    ConsoleRole.ADMIN: "Administrator",
}

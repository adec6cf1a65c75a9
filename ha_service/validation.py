"""Request validation: every field checked, all problems reported at once as INVALID_ARGUMENT with BadRequest."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping

from xsha_common.errors import FieldViolation, ServiceError, invalid_arguments

CLUSTER_ID_MAX = 64
INSTANCE_NAME_MAX = 255
REQUEST_ID_MAX = 128
MESSAGE_MAX = 4096
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

_CLUSTER_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
# CloudStack instance names ("i-2-10-VM", "v-1-VM", "r-4-VM") are XAPI name_labels: printable, no blanks at the ends.
_INSTANCE_NAME_RE = re.compile(r"[^\x00-\x1f\x7f\s](?:[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s])?")


class Violations:
    """Collects field violations; raise_if_any() raises one INVALID_ARGUMENT naming them all."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise invalid_arguments(self.items)

    def enum_filter(self, field: str, values: Iterable[int], names: Mapping[int, str], enum_name: str) -> list[str]:
        """The names of a repeated enum filter's values; each UNSPECIFIED or unknown value is a violation."""
        chosen: list[str] = []
        for index, value in enumerate(values):
            if value in names:
                chosen.append(names[value])
            else:
                self.add(f"{field}[{index}]", f"must be a {enum_name} other than UNSPECIFIED")
        return chosen

    def cluster_id(self, value: str, field: str = "cluster_id", *, required: bool = True) -> None:
        if not value:
            if required:
                self.add(field, "is required: the CloudStack cluster id (e.g. '1' or a uuid)")
            return
        if len(value) > CLUSTER_ID_MAX:
            self.add(field, f"must be at most {CLUSTER_ID_MAX} characters, got {len(value)}")
        elif not _CLUSTER_ID_RE.fullmatch(value):
            self.add(field, "must start with a letter or digit and contain only letters, digits and . _ : -")

    def instance_name(self, value: str, field: str = "instance_name") -> None:
        if not value:
            self.add(field, "is required: CloudStack's instance name, the VM's XAPI name_label (e.g. 'i-2-10-VM')")
            return
        if len(value) > INSTANCE_NAME_MAX:
            self.add(field, f"must be at most {INSTANCE_NAME_MAX} characters, got {len(value)}")
        elif not _INSTANCE_NAME_RE.fullmatch(value):
            self.add(field, "must be printable, without control characters or blanks at either end")

    def vm_uuid(self, value: str, field: str = "vm_uuid") -> None:
        if not value:
            return
        try:
            uuid.UUID(value)
        except ValueError:
            self.add(field, f"must be a XAPI VM uuid (8-4-4-4-12 hex digits), got {value!r}; leave it empty if unknown")

    def request_id(self, value: str, field: str = "request_id") -> None:
        if len(value) > REQUEST_ID_MAX:
            self.add(field, f"must be at most {REQUEST_ID_MAX} characters, got {len(value)}")

    def message(self, value: str, field: str = "message") -> None:
        if len(value) > MESSAGE_MAX:
            self.add(field, f"must be at most {MESSAGE_MAX} characters, got {len(value)}")

    def page_size(self, value: int, field: str = "page_size") -> int:
        if value < 0:
            self.add(field, f"must be 0 (default {DEFAULT_PAGE_SIZE}) or positive, got {value}")
            return DEFAULT_PAGE_SIZE
        if value > MAX_PAGE_SIZE:
            self.add(field, f"must be at most {MAX_PAGE_SIZE}, got {value}")
        return value or DEFAULT_PAGE_SIZE

    def page_token(self, value: str, field: str = "page_token") -> str:
        if not value:
            return ""
        if len(value) > 512 or not value.isprintable():
            self.add(field, "is not a token this server gave out; pass next_page_token from the previous answer")
        return value

    def int_page_token(self, value: str, field: str = "page_token") -> int:
        if not value:
            return 0
        if not value.isdigit() or len(value) > 19:
            self.add(field, "is not a token this server gave out; pass next_page_token from the previous answer")
            return 0
        return int(value)


def single(field: str, description: str) -> ServiceError:
    return invalid_arguments([FieldViolation(field, description)])

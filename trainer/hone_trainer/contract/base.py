"""What every contract type shares: camelCase JSON, and results sized for a termination message."""

from __future__ import annotations

import json
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: Kubernetes keeps at most this many bytes of a container's termination message.
TERMINATION_MESSAGE_LIMIT = 4096


class CamelModel(BaseModel):
    """A contract type: camelCase JSON (as in the Kubernetes status it lands in), unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=False
    )

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class DataFile(CamelModel):
    """One JSONL file as the pod sees it: a local path or a remote URI."""

    location: str = Field(
        description="A path inside the pod (mounted ConfigMap/PVC) or an s3://, "
        "http(s):// URI the trainer fetches with fsspec."
    )
    credentials_dir: str | None = Field(
        None, description="Directory of the mounted Secret with credentials for the URI."
    )


def to_termination_message(result: BaseModel, limit: int = TERMINATION_MESSAGE_LIMIT) -> str:
    """Serialise a result compactly so that it fits Kubernetes' termination message.

    Lists (problems, warnings; an evaluation's grading failures) are shortened from the end until it fits;
    the counts are kept, so nothing is silently lost from the totals.
    """
    data = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    for key in ("problems", "warnings", "failures"):
        while len(text.encode()) > limit and data.get(key):
            data[key] = data[key][:-1]
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    for key in ("problems", "warnings", "failures"):
        # Messages themselves may be long (a quoted line): clip them next.
        if len(text.encode()) > limit and key in data:
            data[key] = []
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode()) > limit:
        raise ValueError(f"result does not fit in {limit} bytes even without problem details")
    return text


M = TypeVar("M", bound=BaseModel)


def parse_result(text: str | None, model: type[M]) -> M | None:
    """Parse a result file or termination message; None when absent or unparsable."""
    if not text or not text.strip():
        return None
    try:
        return model.model_validate_json(text.strip())
    except ValueError:
        return None

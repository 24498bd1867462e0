"""ARN formats of AWS Batch resources, and turning a user's reference (name or ARN) into a name."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.errors import ValidationError

_ARN = re.compile(r"^arn:aws[a-zA-Z-]*:batch:(?P<region>[^:]*):(?P<account>\d*):(?P<kind>[a-z-]+)/(?P<rest>.+)$")


@dataclass(frozen=True)
class Arns:
    """Builds ARNs for one region and account (both configurable on the server)."""

    region: str
    account_id: str

    def _arn(self, kind: str, rest: str) -> str:
        return f"arn:aws:batch:{self.region}:{self.account_id}:{kind}/{rest}"

    def job(self, job_id: str) -> str:
        return self._arn("job", job_id)

    def job_queue(self, name: str) -> str:
        return self._arn("job-queue", name)

    def compute_environment(self, name: str) -> str:
        return self._arn("compute-environment", name)

    def job_definition(self, name: str, revision: int) -> str:
        return self._arn("job-definition", f"{name}:{revision}")

    def scheduling_policy(self, name: str) -> str:
        return self._arn("scheduling-policy", name)

    def consumable_resource(self, name: str) -> str:
        return self._arn("consumable-resource", name)


@dataclass(frozen=True)
class ParsedArn:
    kind: str  # job, job-queue, compute-environment, job-definition, scheduling-policy, consumable-resource
    resource: str  # the part after "<kind>/"


def parse_arn(value: str) -> ParsedArn | None:
    """Split a Batch ARN; None when `value` is not an ARN (so it is a plain name)."""
    match = _ARN.fullmatch(value)
    if match is None:
        if value.startswith("arn:"):
            raise ValidationError(f"{value} is not a valid AWS Batch ARN")
        return None
    return ParsedArn(kind=match["kind"], resource=match["rest"])


def name_from_reference(reference: str, kind: str) -> str:
    """A queue/CE reference may be its name or its ARN; both name the same resource."""
    parsed = parse_arn(reference)
    if parsed is None:
        return reference
    if parsed.kind != kind:
        raise ValidationError(f"{reference} is not a {kind} ARN")
    return parsed.resource

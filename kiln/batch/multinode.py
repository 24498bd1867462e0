"""Multi-node parallel (MNP) jobs: the pure rules (https://docs.aws.amazon.com/batch/latest/userguide/multi-node-parallel-jobs.html). No I/O.

A definition's `nodeProperties` names `numNodes`, a `mainNode` and node ranges (`targetNodes`
`a:b` inclusive, `:b` from 0, `a:` to the last node, `a` one node). Ranges must cover every node;
two ranges may only be disjoint or nested, and a node takes the container of the narrowest range
holding it (AWS: `4:5` inside `0:10` overrides it). SubmitJob's `nodeOverrides` may change
`numNodes` (only through an open-ended range) and override the container of ranges that match
the definition's. The result is one resolved container per node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kiln.engine import containers
from kiln.errors import ValidationError
from kiln.store.records import Document

MAX_NODES = 1000
MAX_NODE_RANGES = 5
_RANGE = re.compile(r"^(?P<start>\d*)(?P<colon>:?)(?P<end>\d*)$")


@dataclass(frozen=True)
class NodeRange:
    start: int
    end: int  # inclusive
    open_ended: bool  # written `a:`: it grows with numNodes

    @property
    def width(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class ResolvedNodes:
    """What SubmitJob stores of an MNP job: the view of `nodeProperties` and each node's container."""

    num_nodes: int
    main_node: int
    node_properties: Document  # numNodes, mainNode, nodeRangeProperties (containers resolved)
    containers: list[Document]  # index i: node i's container


def parse_range(target: str, num_nodes: int, where: str = "targetNodes") -> NodeRange:
    """`a:b`, `:b`, `a:` or `a` within 0..num_nodes-1."""
    match = _RANGE.match(target or "")
    if match is None or not (match["start"] or match["end"]):
        raise ValidationError(f"{where} {target!r} is not a node range: use a:b, :b, a: or a (node indexes from 0)")
    start = int(match["start"]) if match["start"] else 0
    open_ended = bool(match["colon"]) and not match["end"]
    end = int(match["end"]) if match["end"] else (num_nodes - 1 if match["colon"] else start)
    if start > end:
        raise ValidationError(f"{where} {target}: the range starts after it ends")
    if end >= num_nodes:
        raise ValidationError(
            f"{where} {target} goes beyond the last node: numNodes is {num_nodes}, so node indexes run 0:{num_nodes - 1}"
        )
    return NodeRange(start, end, open_ended)


def _check_counts(num_nodes: Any, main_node: Any) -> None:
    if not isinstance(num_nodes, int) or not 1 <= num_nodes <= MAX_NODES:
        raise ValidationError(f"numNodes must be between 1 and {MAX_NODES} (got {num_nodes})")
    if not isinstance(main_node, int) or not 0 <= main_node < num_nodes:
        raise ValidationError(f"mainNode must be a node index below numNodes ({num_nodes}) (got {main_node})")


def _check_layout(ranges: list[tuple[str, NodeRange]], num_nodes: int) -> None:
    """Every node covered; any two ranges disjoint or nested, never equal or crossing."""
    for i, (text_a, a) in enumerate(ranges):
        for text_b, b in ranges[i + 1 :]:
            disjoint = a.end < b.start or b.end < a.start
            nested = (a.start <= b.start and b.end <= a.end) or (b.start <= a.start and a.end <= b.end)
            if (a.start, a.end) == (b.start, b.end) or not (disjoint or nested):
                raise ValidationError(
                    f"Node ranges {text_a} and {text_b} overlap: ranges must be disjoint, or one nested inside "
                    "the other (the narrower one then overrides)"
                )
    covered: set[int] = set()
    for _, r in ranges:
        covered.update(range(r.start, r.end + 1))
    missing = [i for i in range(num_nodes) if i not in covered]
    if missing:
        shown = ", ".join(str(i) for i in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ValidationError(
            f"The node ranges must account for all nodes (0:{num_nodes - 1}); not covered: node {shown}"
        )


def _ranges(node_properties: Document, num_nodes: int) -> list[tuple[str, NodeRange]]:
    entries = node_properties.get("nodeRangeProperties") or []
    if not entries:
        raise ValidationError("nodeProperties.nodeRangeProperties needs at least one node range")
    if len(entries) > MAX_NODE_RANGES:
        raise ValidationError(
            f"nodeProperties can have at most {MAX_NODE_RANGES} node ranges (node groups) (got {len(entries)})"
        )
    ranges = []
    for i, entry in enumerate(entries):
        where = f"nodeRangeProperties[{i}].targetNodes"
        ranges.append(
            (str(entry.get("targetNodes")), parse_range(str(entry.get("targetNodes") or ""), num_nodes, where))
        )
    return ranges


def check_node_properties(node_properties: Document) -> None:
    """RegisterJobDefinition's rules for `nodeProperties` (each range's container as any container)."""
    num_nodes, main_node = node_properties.get("numNodes"), node_properties.get("mainNode")
    _check_counts(num_nodes, main_node)
    count = int(num_nodes or 0)
    _check_layout(_ranges(node_properties, count), count)
    for i, entry in enumerate(node_properties.get("nodeRangeProperties") or []):
        where = f"nodeRangeProperties[{i}].container"
        for shape in ("ecsProperties", "eksProperties"):
            if entry.get(shape):
                raise ValidationError(f"nodeRangeProperties[{i}].{shape} is not supported yet: Kiln runs one "
                                      "container per node of a multi-node parallel job; give the node range a "
                                      "container")  # fmt: skip
        if not entry.get("container"):
            raise ValidationError(f"{where} is required: each node range needs a container")
        if len(entry.get("instanceTypes") or []) > 1:
            raise ValidationError(f"nodeRangeProperties[{i}].instanceTypes can have at most one element")
        containers.check_container(entry["container"], where=where)


def _effective_num_nodes(node_properties: Document, overrides: Document) -> int:
    num_nodes = int(node_properties["numNodes"])
    wanted = overrides.get("numNodes")
    if wanted is None or wanted == num_nodes:
        return num_nodes
    ranges = _ranges(node_properties, num_nodes)
    open_ranges = [(text, r) for text, r in ranges if r.open_ended]
    if not open_ranges:
        raise ValidationError(
            "nodeOverrides.numNodes can only change the node count when the job definition has an open-ended "
            "node range (for example 1:)"
        )
    lowest = max(r.start for _, r in open_ranges)
    if not isinstance(wanted, int) or wanted > MAX_NODES or wanted <= lowest or wanted <= node_properties["mainNode"]:
        raise ValidationError(
            f"nodeOverrides.numNodes ({wanted}) must be above the start of the open-ended node range ({lowest}) "
            f"and the main node index ({node_properties['mainNode']}), and at most {MAX_NODES}"
        )
    return int(wanted)


def resolve(node_properties: Document, overrides: Document | None, parameters: dict[str, str]) -> ResolvedNodes:
    """The job's nodes: definition ranges under `nodeOverrides`, containers resolved per node."""
    overrides = overrides or {}
    num_nodes = _effective_num_nodes(node_properties, overrides)
    main_node = int(node_properties["mainNode"])
    ranges = _ranges(node_properties, num_nodes)
    _check_layout(ranges, num_nodes)
    spans = [(r.start, r.end) for _, r in ranges]
    by_span: dict[tuple[int, int], list[Document]] = {}
    unmatched = []
    for i, entry in enumerate(overrides.get("nodePropertyOverrides") or []):
        target = str(entry.get("targetNodes") or "")
        try:
            parsed = parse_range(target, num_nodes, f"nodePropertyOverrides[{i}].targetNodes")
        except ValidationError:
            parsed = None
        if parsed is None or (parsed.start, parsed.end) not in spans:
            unmatched.append(target)
            continue
        by_span.setdefault((parsed.start, parsed.end), []).append(entry.get("containerOverrides") or {})
    if unmatched:
        raise ValidationError(
            f"NodeOverride targets should match job definition. Non matching targets - {', '.join(unmatched)}"
        )
    resolved_ranges = []
    for (text, r), entry in zip(ranges, node_properties["nodeRangeProperties"], strict=True):
        container = containers.apply_overrides(entry["container"], None)  # a copy: the definition stays as it is
        for container_overrides in by_span.get((r.start, r.end), []):
            container = containers.apply_overrides(container, container_overrides)
        containers.check_container(container, where=f"node range {text} container")
        container["command"] = containers.substitute(container.get("command") or [], parameters)
        resolved_ranges.append((r, {**entry, "container": container}))
    per_node = []
    for index in range(num_nodes):
        holders = [(r, entry) for r, entry in resolved_ranges if r.start <= index <= r.end]
        per_node.append(min(holders, key=lambda item: item[0].width)[1]["container"])
    view = {"numNodes": num_nodes, "mainNode": main_node,
            "nodeRangeProperties": [entry for _, entry in resolved_ranges]}  # fmt: skip
    return ResolvedNodes(num_nodes, main_node, view, per_node)


def node_id(job_id: str, index: int) -> str:
    return f"{job_id}#{index}"


def split_node_id(job_id: str) -> tuple[str, int] | None:
    """`<job>#<i>` -> (job, i); None for any other id."""
    parent, sep, index = job_id.rpartition("#")
    return (parent, int(index)) if sep and parent and index.isdigit() else None

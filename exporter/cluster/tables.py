"""The cluster view for people: `fit` and `summary` as tables."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from exporter.cluster.fit import NodeFit
from exporter.cluster.nrtmatch import (
    format_quantity,
)
from exporter.cluster.plan import ProfilePlan


def fit_table(fits: Sequence[NodeFit]) -> str:
    rows = [("NODE", "FITS", "NUMA", "POLICY", "REASON / NOTE")]
    for f in fits:
        mark = "?" if f.fits is None else ("yes" if f.fits else "no")
        numa = ",".join(str(n) for n in f.numa_nodes) or "-"
        rows.append((f.node, mark, numa, f.policy or "(no NRT)", f.reason or "; ".join(f.notes)))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
        for row in rows
    ]
    fitting = sum(1 for f in fits if f.fits)
    unknown = sum(1 for f in fits if f.fits is None)
    lines.append(
        f"fits on {fitting} of {len(fits)} nodes" + (f" ({unknown} without an NRT: unknown)" if unknown else "")
    )
    return "\n".join(line.rstrip() for line in lines) + "\n"



def plan_table(plans: Sequence[ProfilePlan]) -> str:
    lines = []
    for p in plans:
        lines.append(
            f"profile {p.profile}: {p.aligned} more pods aligned on {sum(1 for c in p.per_node.values() if c)} "
            f"of {len(p.per_node)} NUMA-filtered nodes ({p.unaligned} if NUMA did not matter: "
            f"{p.fragmentation} lost to fragmentation)"
        )
        for resource in sorted(p.available):
            lines.append(
                f"  {resource}: {format_quantity(resource, p.available[resource])} available, "
                f"{format_quantity(resource, p.stranded.get(resource, Fraction(0)))} stranded for this profile"
            )
        for gain in p.freeing:
            more = str(gain.at_least) if gain.at_least == gain.at_most else f"{gain.at_least} to {gain.at_most}"
            where = "" if gain.exact else " (its NUMA node is not known: a range over the candidates)"
            lines.append(f"  freeing {gain.pod} on {gain.node} admits {more} more{where}")
    return "\n".join(lines) + "\n"

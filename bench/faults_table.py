"""The fault campaign's rows and how they print: one table per backend, or both side by side."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.table import markdown


@dataclass
class Row:
    case: str
    surface: str
    stream: bool | str
    outcome: str
    counted: str
    told: int
    served: int
    charged: int
    flagged: bool

    @property
    def lost(self) -> int:
        return self.served - max(self.told, self.charged)

    def cells(self) -> list[object]:
        stream = self.stream if isinstance(self.stream, str) else ("yes" if self.stream else "no")
        lost = f"{self.lost} !" if self.lost > 0 else self.lost
        return [self.case, self.surface, stream, self.outcome, self.counted, self.told, self.served, self.charged,
                "yes" if self.flagged else "", lost]


HEADERS = ["fault", "surface", "stream", "outcome", "counted", "told", "served", "charged", "flagged", "lost"]




def combined(first: Sequence[Row], second: Sequence[Row], names: Sequence[str]) -> str:
    """One table, a row per case, each backend's outcome and tokens side by side (`served` is the
    first backend's; the second's is in its `lost`). Cases only one backend ran show "-"."""
    other = {(r.case, r.surface, r.stream): r for r in second}
    per = ["outcome", "counted", "told", "charged", "flagged", "lost"]
    headers = ["fault", "surface", "stream", "served", *(f"{n} {h}" for n in names for h in per)]
    rows = []
    for r in first:
        cells = r.cells()
        mine = [cells[3], cells[4], cells[5], cells[7], cells[8], cells[9]]
        o = other.get((r.case, r.surface, r.stream))
        theirs = ["-"] * len(per) if o is None else [o.cells()[i] for i in (3, 4, 5, 7, 8, 9)]
        rows.append([*cells[:3], r.served, *mine, *theirs])
    return markdown(headers, rows)

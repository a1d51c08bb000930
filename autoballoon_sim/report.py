"""The comparison table, as Markdown (for docs/policies.md) or with rich."""

from __future__ import annotations

from collections.abc import Sequence

from autoballoon_sim.runner import RunResult

COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("trace", "trace", "{}"),
    ("policy", "policy", "{}"),
    ("host_stall_s", "host stall s", "{:.0f}"),
    ("guest_pressure_s", "guest pressure s", "{:.0f}"),
    ("host_oom", "host OOM kills", "{}"),
    ("guest_oom", "guest OOM events", "{}"),
    ("down_s", "guest down s", "{:.0f}"),
    ("handed_back_gib_h", "handed back GiB·h", "{:.0f}"),
    ("peak_back_gib", "peak back GiB", "{:.1f}"),
    ("actions", "actions", "{}"),
    ("moved_gib", "moved GiB", "{:.0f}"),
)


def rows(results: Sequence[RunResult]) -> list[list[str]]:
    out = []
    for result in results:
        row = result.row()
        out.append([fmt.format(row[key]) for key, _title, fmt in COLUMNS])
    return out


def markdown(results: Sequence[RunResult]) -> str:
    titles = [title for _key, title, _fmt in COLUMNS]
    lines = ["| " + " | ".join(titles) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(titles))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(results)]
    return "\n".join(lines)


def print_rich(results: Sequence[RunResult], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for index, (_key, name, _fmt) in enumerate(COLUMNS):
        table.add_column(name, justify="left" if index < 2 else "right")
    for row in rows(results):
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped: do not squeeze the columns
    console.print(table)

"""Plain-text and Markdown tables, as the benchmarks print them."""

from __future__ import annotations


def print_rows(headers: tuple[str, ...], rows: list[list[str]], markdown: bool) -> None:
    """Aligned columns, or a Markdown table (the first two columns left-aligned)."""
    if markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join("---" if i < 2 else "---:" for i in range(len(headers))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))

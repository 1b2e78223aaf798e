"""The rows of `run_bench` for people: a rich table, one section per
workload, and a caption saying what each workload is and how the floor was
measured."""

from __future__ import annotations

from collections.abc import Sequence


def rows_table(rows: Sequence[dict]):
    """The rows as a rich Table, one section per workload; the caption says
    what each workload is and how the floor was measured."""
    from rich.table import Table

    table = Table(
        title="optsvc bench: optimizer step vs. the memory-bandwidth floor",
        caption=floor_caption(rows),
        caption_justify="left",
    )
    several = len({row["optimizer"] for row in rows}) > 1
    columns = ("workload", "optimizer", "implementation", "ms/step", "GB/s")
    for col in columns if several else columns[:1] + columns[2:]:
        table.add_column(col, justify="left" if col[0] in "woi" else "right")
    table.add_column("x floor", justify="right")
    table.add_column("vs thinc", justify="right")
    table.add_column("notes", overflow="fold")

    def fmt(value, spec, unit=""):
        return "-" if value is None else format(value, spec) + unit

    last = None
    for row in rows:
        if last is not None and row["workload"] != last:
            table.add_section()
        last = row["workload"]
        table.add_row(
            row["workload"],
            *([row["optimizer"]] if several else []),
            row["implementation"],
            fmt(row["ms"], ".3f"),
            fmt(row["gbps"], ".1f"),
            fmt(row["x_floor"], ".2f", "x"),
            fmt(row["speedup_vs_thinc"], ".2f", "x"),
            row["notes"],
        )
    return table


def floor_caption(rows: Sequence[dict]) -> str:
    """What the workloads are and how the floor was measured."""
    if not rows:
        return ""
    seen: dict[tuple, dict] = {}
    for row in rows:  # each optimizer has its own floor on each workload
        seen.setdefault((row["workload"], row["optimizer"]), row)
    lines = [
        f"{name}: {r['description']}; {optimizer}: floor {r['floor_ms']:.3g} ms = "
        f"{r['bytes_per_param']} B/param at {r['floor_gbps']:.1f} GB/s "
        f"(best of a copy and an in-place rewrite of "
        f"{r['floor_copy_bytes'] / 2**20:.3g} MiB)"
        for (name, optimizer), r in seen.items()
    ]
    row = rows[0]
    lines.append(
        "x floor = ms / floor ms; vs thinc = Thinc's ms / ms; "
        f"median of {row['repeat']} steps after {row['warmup']} warm-up; "
        f"{row['device']}; threads: {row['threads']}"
    )
    return "\n".join(lines)

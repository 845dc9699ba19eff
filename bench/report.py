"""The results: a Markdown table, a PNG chart (when matplotlib is installed), JSON, and the README's
Performance section, which is replaced between two markers."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from pathlib import Path

from bench.common import ROOT
from bench.scenarios import Row

README_START = "<!-- bench:start (written by python -m bench --update-readme) -->"
README_END = "<!-- bench:end -->"


def machine() -> dict[str, str]:
    """What the figures were measured on."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        commit = ""
    return {"cores": str(os.cpu_count()), "cpu": model, "python": platform.python_version(),
            "load": load, "commit": commit}


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(rows: list[Row]) -> str:
    lines = ["| scenario | server | rate | p50 ms | p99 ms | peak RSS MB | CPU us/req | ratio | note |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        rate = "-" if r.rate is None else f"{r.rate:,.0f} {r.unit}"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f} vs {r.reference}"
        lines.append(f"| {r.scenario} | {r.server} | {rate} | {_num(r.p50_ms, '.2f')} | {_num(r.p99_ms, '.2f')} "
                     f"| {_num(r.peak_rss_mb, '.0f')} | {_num(r.cpu_us, '.1f')} | {ratio} | {r.note} |")
    return "\n".join(lines)


def header(info: dict[str, str], date: str, rounds: int, duration: float, connections: int) -> str:
    return (f"Measured {date} on {info['cores']} cores ({info['cpu']}), Python {info['python']}, commit "
            f"{info['commit'] or '?'}; load average at the start {info['load']}. wrk -t1 -c{connections} "
            f"--latency, {duration:g} s a run, {rounds} round(s) alternating the servers; medians (peak RSS: "
            f"the highest).")


def chart(rows: list[Row], path: Path) -> str:
    """A bar per compared row: its rate as a ratio of the reference's (1.0 = as fast). Returns a message."""
    try:
        import matplotlib
    except ImportError:
        return "matplotlib is not installed (pip install '.[bench]'): no chart"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    compared = [r for r in rows if r.ratio is not None]
    if not compared:
        return "nothing compared: no chart"
    names = [f"{r.scenario}\n{r.server} vs {r.reference}" for r in compared]
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(compared) + 1.5))
    ax.barh(names, [r.ratio for r in compared],
            color=["tab:green" if r.ratio >= 1 else "tab:orange" for r in compared])
    ax.axvline(1.0, color="black", linewidth=1)
    ax.invert_yaxis()
    ax.set_xlabel("1.0 = as fast as the reference")
    ax.set_title("rate / reference rate (varnishd; /tcp: bare asyncio)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"chart: {path}"


def write(rows: list[Row], out_dir: Path, head: str, info: dict[str, str]) -> list[str]:
    """results.md, results.json and chart.png into out_dir; returns messages for the user."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(f"{head}\n\n{table(rows)}\n")
    (out_dir / "results.json").write_text(json.dumps(
        {"machine": info, "header": head, "rows": [dataclasses.asdict(r) for r in rows]}, indent=1) + "\n")
    return [f"table: {out_dir / 'results.md'}", chart(rows, out_dir / "chart.png")]


def update_readme(readme: Path, head: str, rows: list[Row], out_dir: Path, note: str) -> None:
    """Replace the Performance section's table (between the markers) with this run's."""
    text = readme.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise SystemExit(f"{readme}: no {README_START!r} ... {README_END!r} markers")
    rel = out_dir.relative_to(ROOT) if out_dir.is_relative_to(ROOT) else out_dir
    body = f"{README_START}\n{head}{' ' + note if note else ''} Chart and JSON: `{rel}/`.\n\n{table(rows)}\n"
    readme.write_text(text[:start] + body + text[end:])

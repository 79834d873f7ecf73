"""Render docs/benchmarks.md and docs/benchmarks-flash-sale.png from the results.

    python -m bench.report [RESULT.json ...] [--doc PATH] [--plot PATH]

Without arguments: every preset and provider setting (unlimited, and each quota)
under bench/results/, biggest preset first. Figures are ratios within one run; with several runs
of the same preset and setting, the table shows the median of each figure and the
number of runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from app.settings import PROJECT_ROOT
from bench.flash_sale import RESULTS_DIR

DOC = PROJECT_ROOT / "docs" / "benchmarks.md"
PLOT = PROJECT_ROOT / "docs" / "benchmarks-flash-sale.png"
PEERS = ("celery", "pgqueue")


def load(paths: list[Path]) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in paths]


def setting(doc: dict[str, Any]) -> str:
    return f"quota {doc['quota_per_s']}/s" if doc["quota_per_s"] else "unlimited"


def newest_groups(results_dir: Path) -> list[list[dict[str, Any]]]:
    """Runs grouped by (preset, provider setting): every group, biggest preset first."""
    docs = load(sorted(results_dir.glob("flash-sale-*.json")))
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for d in docs:
        groups[(d["preset"], setting(d))].append(d)
    order = {"full": 0, "quick": 1, "smoke": 2}
    keys = sorted(groups, key=lambda k: (order.get(k[0], 3), k[1] != "unlimited", k[1]))
    return [sorted(groups[k], key=lambda r: r["started_at"]) for k in keys]


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def figures(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """system -> median figures over the runs that include it."""
    per: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for doc in runs:
        for s in doc["systems"]:
            per[s["system"]].append(s)
    out: dict[str, dict[str, Any]] = {}
    for system, rs in per.items():
        tts = {
            p: {
                q: med([r["time_to_send_ms"].get(p, {}).get(q) for r in rs]) for q in ("p50", "p99")
            }
            for p in ("critical", "normal", "bulk", "critical_late")
        }
        workers = [
            (k, v)
            for r in rs
            for k, v in r["resources"].items()
            if k not in ("kafka-broker", "redis-server", "postgres")
        ]
        infra = [
            (k, v)
            for r in rs
            for k, v in r["resources"].items()
            if k in ("kafka-broker", "redis-server", "postgres")
        ]
        out[system] = {
            "runs": len(rs),
            "config": rs[-1]["config"],
            "intake": med([r["intake"]["events_per_s"] for r in rs if r["intake"]]),
            "ack_p50": med([r["intake"]["ack_p50_ms"] for r in rs if r["intake"]]),
            "ack_p99": med([r["intake"]["ack_p99_ms"] for r in rs if r["intake"]]),
            "ack_max": med([r["intake"]["ack_max_ms"] for r in rs if r["intake"]]),
            "intake_how": rs[-1]["intake"]["how"] if rs[-1]["intake"] else "",
            "drain": med([r["drain_s"] for r in rs]),
            "rate": med([r["send_rate_per_s"] for r in rs]),
            "tts": tts,
            "peak_rss_worker": max((v["peak_rss_mb"] for _, v in workers), default=None),
            "cpu_workers": med(
                [
                    sum(
                        v["cpu_s"]
                        for k, v in r["resources"].items()
                        if k not in ("kafka-broker", "redis-server", "postgres")
                    )
                    for r in rs
                ]
            ),
            "infra": {k: v for k, v in infra},
            "resources": rs[-1]["resources"],
            "correct": all(r["correct"] and r["sent"] == r["produced"] for r in rs),
            "sent": rs[-1]["sent"],
            "dead": rs[-1]["dead"],
            "produced": rs[-1]["produced"],
            "duplicates": max(r["duplicates"] for r in rs),
            "notes": sorted({n for r in rs for n in r["notes"]}),
            "series": rs[-1]["series"],
        }
    return out


def fmt(v: float | None, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


def ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def section(runs: list[dict[str, Any]]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    doc = runs[-1]
    f = figures(runs)
    n_runs = len(runs)
    lines = [
        f"## {doc['preset']} preset, {doc['events']:,} events, provider {setting(doc)}",
        "",
        f"{n_runs} run(s), newest {doc['started_at']}; "
        + ("medians over the runs." if n_runs > 1 else "a single run: no median yet."),
        "",
        "| system | intake ev/s | ack p50 / p99 / max ms | drain s | sends/s | "
        "time-to-send p50 / p99 ms: critical | normal | bulk | late critical | "
        "peak RSS / worker MB | worker CPU s | sent / dead / dups |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system, x in f.items():
        t = x["tts"]
        lines.append(
            f"| {system} | {fmt(x['intake'])} | {fmt(x['ack_p50'], '.1f')} / "
            f"{fmt(x['ack_p99'], '.1f')} / {fmt(x['ack_max'], '.1f')} | {fmt(x['drain'], '.1f')} | "
            f"{fmt(x['rate'])} | {fmt(t['critical']['p50'])} / {fmt(t['critical']['p99'])} | "
            f"{fmt(t['normal']['p50'])} / {fmt(t['normal']['p99'])} | "
            f"{fmt(t['bulk']['p50'])} / {fmt(t['bulk']['p99'])} | "
            f"{fmt(t['critical_late']['p50'])} / {fmt(t['critical_late']['p99'])} | "
            f"{fmt(x['peak_rss_worker'])} | {fmt(x['cpu_workers'], '.1f')} | "
            f"{x['sent']} / {x['dead']} / {x['duplicates']}"
            f"{'' if x['correct'] else ' **incomplete**'} |"
        )
    if doc.get("late_critical"):
        lines += [
            "",
            f"Late critical: {doc['late_critical']} password resets sent at "
            f"{doc['late_rate_per_s']:.0f}/s through each system's own intake once half "
            "the burst was accepted by the provider, i.e. while the burst "
            + ("saturates the quota" if doc["quota_per_s"] else "is still draining")
            + ". The critical column counts the resets inside the burst, which wait "
            "for everything produced before them to be read.",
        ]
    variants = [s for s in f if s.startswith("spillway-")]  # e.g. spillway-3dispatch
    lines += ["", "Ratios (drain time: lower is better; Spillway's drain vs each):", ""]
    sp = f.get("spillway")
    if sp:
        lines.append(
            "| vs | drain (other ÷ Spillway) | sends/s (Spillway ÷ other) | "
            "intake (Spillway ÷ other) | critical p99 (other ÷ Spillway) | "
            "late critical p99 (other ÷ Spillway) |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|")
        for other in ("bare", *PEERS, *variants):
            if other in f:
                o = f[other]
                lines.append(
                    f"| {other}{' (ceiling)' if other == 'bare' else ''} | "
                    f"{ratio(o['drain'], sp['drain'])} | {ratio(sp['rate'], o['rate'])} | "
                    f"{ratio(sp['intake'], o['intake'])} | "
                    f"{ratio(o['tts']['critical']['p99'], sp['tts']['critical']['p99'])} | "
                    f"{ratio(o['tts']['critical_late']['p99'], sp['tts']['critical_late']['p99'])}"
                    " |"
                )
    lines += ["", "Configurations, intake method and resources per process (newest run):", ""]
    for system, x in f.items():
        res = ", ".join(
            f"{k} {v['peak_rss_mb']:.0f} MB / {v['cpu_s']:.1f} s CPU"
            for k, v in x["resources"].items()
        )
        lines.append(f"- **{system}**: {x['config']}. Intake: {x['intake_how']}. {res}.")
        for note in x["notes"]:
            lines.append(f"  - note: {note}")
    lines.append("")
    return lines, f


def intake_section(results_dir: Path) -> list[str]:
    """The newest ``bench.intake`` result: ack latency at a fixed offered load."""
    found = sorted(results_dir.glob("intake-*.json"))
    if not found:
        return []
    doc = json.loads(found[-1].read_text())
    lines = [
        f"## Intake at a fixed offered load ({doc['rate_per_s']:.0f} events/s for "
        f"{doc['seconds']:.0f} s)",
        "",
        f"`python -m bench.intake` (run {doc['started_at']}, {len(found)} run(s) on record): "
        "open loop, latency from each event's scheduled start to its acknowledgement. "
        "HTTP: `POST /v1/events`, one JSON event per request, then `POST /v1/events/batch` "
        f"with {doc.get('http_batch', {}).get('batch', '?')} events per request (an event's "
        "latency is its request's), each answered 202 after the broker's acks=all (intake "
        f"worker linger {doc.get('intake_linger_ms', '?')} ms). Kafka: one confluent-kafka "
        "producer, acks=all, linger 1 ms. Requests are counted in the answered column, "
        "events in the achieved column.",
        "",
        "| path | answered / offered | achieved events/s | errors | p50 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    rows = (
        ("http", "HTTP intake, single"),
        ("http_batch", "HTTP intake, batch"),
        ("kafka", "Kafka producer"),
    )
    for name, label in rows:
        if name not in doc:
            continue
        r = doc[name]
        lines.append(
            f"| {label} | {r['answered']} / {r['offered']} | "
            f"{fmt(r.get('events_per_s', r['achieved_per_s']))} | "
            f"{r['errors']} | {fmt(r['p50_ms'], '.1f')} | {fmt(r['p99_ms'], '.1f')} | "
            f"{fmt(r['max_ms'], '.1f')} |"
        )
    if len(found) > 1:
        p99s = [json.loads(f.read_text())["kafka"]["p99_ms"] for f in found]
        lines += [
            "",
            "Kafka producer ack p99 of every run on record, oldest first: "
            + ", ".join(f"{v:.1f}" for v in p99s)
            + f" ms (median {statistics.median(p99s):.1f} ms).",
        ]
    lines.append("")
    return lines


def hot_path(dir_: Path) -> list[str]:
    """Before/after of the hot-path work: Spillway-only runs under ``dir_`` labelled by
    ``steps.json``, and the hottest own-time frames of the profiled ones."""
    runs = load(sorted(dir_.glob("flash-sale-*.json")))
    if not runs:
        return []
    steps = json.loads((dir_ / "steps.json").read_text()) if (dir_ / "steps.json").exists() else {}
    base = runs[0]["systems"][0]
    lines = [
        "## Hot path: before and after",
        "",
        f"Spillway alone, {runs[0]['events']:,} events, provider "
        f"{setting(runs[0])}, each step a separate run on the same machine "
        "(`python -m bench.flash_sale --preset quick --systems spillway --profile`; the "
        f"results are in `{dir_.relative_to(PROJECT_ROOT)}/`). Consecutive runs, not "
        "side by side: read the ratios as rough.",
        "",
        "| run | change | drain s | vs before | CPU s render / route / dispatch / broker | "
        "complete |",
        "|---|---|---:|---:|---:|---|",
    ]
    for doc in runs:
        r = doc["systems"][0]
        cpu = " / ".join(
            fmt(r["resources"].get(k, {}).get("cpu_s"), ".1f")
            for k in ("spillway-render", "spillway-route", "spillway-dispatch", "kafka-broker")
        )
        faster = ratio(base["drain_s"], r["drain_s"]) if r["correct"] else "-"
        lines.append(
            f"| {doc['started_at']} | {steps.get(doc['started_at'], '')} | "
            f"{fmt(r['drain_s'], '.1f')} | {faster} | {cpu} | "
            f"{'yes' if r['correct'] else 'no: ' + '; '.join(r['notes'])[:80]} |"
        )
    profiled = sorted(p for p in (dir_ / "profiles").glob("*") if p.is_dir())
    for prof in profiled:
        lines += [
            "",
            f"Hottest own-time frames, run {prof.name} "
            f"({steps.get(prof.name, '').split(':')[0] or 'profiled'}; py-spy, "
            f"`{prof.relative_to(PROJECT_ROOT)}/`):",
            "",
        ]
        for top in sorted(prof.glob("*.top.txt")):
            text = top.read_text().splitlines()
            own = text[text.index("own %  function") + 1 :][:6] if "own %  function" in text else []
            frames = "; ".join(
                f"{line.split(None, 1)[1].split(' (')[0]} {line.split()[0]}%" for line in own
            )
            ours = [
                line.split()
                for line in text[text.index("inclusive %  own %  function") + 1 :]
                if "(app/" in line and line.split()[0].replace(".", "", 1).isdigit()
            ] if "inclusive %  own %  function" in text else []
            inclusive = "; ".join(f"{' '.join(f[2:])} {f[0]}%" for f in ours[:6])
            lines.append(f"- {top.name.removesuffix('.top.txt')}: own time: {frames}")
            if inclusive:
                lines.append(f"  - Spillway's code, inclusive: {inclusive}")
    lines.append("")
    return lines


def plot(sections: list[tuple[str, dict[str, dict[str, Any]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(sections), 2, figsize=(12, 4 * len(sections)), squeeze=False)
    for row, (title, f) in enumerate(sections):
        for system, x in f.items():
            s = x["series"]
            if not s:
                continue
            axes[row][0].plot(s["second"], s["backlog"], label=system)
            axes[row][1].plot(s["second"], s["sent_per_s"], label=system)
        axes[row][0].set_title(f"backlog (produced - sent), {title}")
        axes[row][1].set_title(f"provider acceptances per second, {title}")
        for ax in axes[row]:
            ax.set_xlabel("seconds since the first event")
            ax.legend()
            ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def render(groups: list[list[dict[str, Any]]], doc_path: Path = DOC, plot_path: Path = PLOT) -> str:
    if not groups:
        raise SystemExit("no results under bench/results/: run python -m bench.flash_sale first")
    first = groups[-1][-1]
    m, v = first["machine"], first["versions"]
    lines = [
        "# Benchmarks: the flash sale",
        "",
        "Generated by `python -m bench.report` from `bench/results/*.json` (written by "
        "`python -m bench.flash_sale`); do not edit by hand.",
        "",
        "A burst of events (5% critical password resets, 60% normal order confirmations with "
        "order lines, 35% bulk newsletters) is produced as fast as the system's client can "
        "take it, then rendered with the same templates and sent to a provider simulator of "
        "the run's own. Systems run one after another in the same run, on the same machine, "
        "against the same local Kafka broker. Time-to-send is provider acceptance "
        "(`accepted_at` in the simulator's ledger) minus the moment the event was handed to "
        "the system's client; drain is the first event to the last acceptance.",
        "",
        "Reproduce: `python3 scripts/stack up && python -m bench.flash_sale --preset quick "
        "&& python -m bench.report` (presets: smoke 3,000, quick 30,000, full 300,000 events; "
        "`--quota 1000` for a provider quota, `--quota 0,1000` for both settings in one run; "
        "`spillway-3dispatch` in `--systems` adds Spillway with 3 dispatch workers).",
        "",
        f"Machine: {m['cores']} cores ({m['cpu_model']}), {m['memory_gb']} GB RAM, "
        f"{m['os']}, Python {m['python']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}. The broker, Redis, "
        "PostgreSQL, the simulator, the producer and all workers share these cores.",
        "",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "**Noise.** Small presets finish in seconds, so worker start-up, consumer-group "
        "joins and the producer linger (20 ms per hop) weigh heavily, and the machine may be "
        "shared with other jobs (see the load average). Compare ratios within one run, not "
        "absolute figures across runs; repeat a preset and the report shows medians.",
        "",
        f"![backlog and send rate]({plot_path.name})",
        "",
    ]
    sections = []
    for runs in groups:
        part, f = section(runs)
        lines += part
        sections.append((f"{runs[-1]['preset']}, {setting(runs[-1])}", f))
    plot(sections, plot_path)
    lines += intake_section(RESULTS_DIR)
    lines += hot_path(RESULTS_DIR / "hot-path")
    text = "\n".join(lines)
    doc_path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("results", nargs="*", type=Path)
    parser.add_argument("--doc", type=Path, default=DOC, help=f"default {DOC.name} in docs/")
    parser.add_argument("--plot", type=Path, default=PLOT, help=f"default {PLOT.name} in docs/")
    args = parser.parse_args(argv)
    if args.results:
        by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for d in load(args.results):
            by[(d["preset"], setting(d))].append(d)
        groups = [sorted(g, key=lambda r: r["started_at"]) for _, g in sorted(by.items())]
    else:
        groups = newest_groups(RESULTS_DIR)
    render(groups, args.doc, args.plot)
    print(f"wrote {args.doc} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

# Part of the agent soak bench (tests/agent/soak); see its docstring.
"""The soak bench's tables: per agent, the first and the last window of launches,
the drift of each against the baseline's own, and what was left behind."""

import statistics

from .soak_measure import STAGE_NAMES, summary


def nearest(target, done):
    """The sample of the target taken when the count of its ended tasks was nearest
    to `done`."""
    return min(target.checkpoints, key=lambda s: abs(s["done"] - done), default=None)


def window_samples(target, window, last):
    """The samples at both ends of the first (or the last) `window` ended tasks."""
    if not last:
        return nearest(target, 0), nearest(target, window)
    end = max(target.checkpoints, key=lambda s: s["done"])
    return nearest(target, end["done"] - window), end


def per_launch(a, b, who, key):
    """ms of `key` (a CPU figure) per ended task of process `who` between two samples."""
    if not (a and b and a.get(who) and b.get(who)) or b["done"] <= a["done"]:
        return None
    return (b[who][key] - a[who][key]) / (b["done"] - a["done"])


def rate(a, b):
    return (b["done"] - a["done"]) / (b["t"] - a["t"]) if a and b and b["t"] > a["t"] else None


def mib(sample, who):
    return sample[who]["rss_kib"] / 1024 if sample and sample.get(who) else None


def fds(sample, who):
    return sample[who]["fds"] if sample and sample.get(who) else None


def fmt(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


def latency_cell(records, key):
    s = summary([r[key] for r in records if key in r])
    return "-" if s is None else f"{s['p50']:.1f} / {s['p99']:.1f}"


def stage_p50(records, stage):
    values = [r["stages"][stage] for r in records if stage in r.get("stages", {})]
    return statistics.median(values) if values else None


def window_rows(target, window):
    """(label, first window, last window) rows of one target."""
    by_index = sorted(target.tasks.values(), key=lambda r: r["index"])
    first, last = by_index[:window], by_index[-window:]
    f0, f1 = window_samples(target, window, last=False)
    l0, l1 = window_samples(target, window, last=True)

    def both(who, key):
        return (fmt(per_launch(f0, f1, who, key), ".2f"), fmt(per_launch(l0, l1, who, key), ".2f"))
    rows = [
        ("launch latency p50 / p99 ms (agent)", latency_cell(first, "agent_ms"),
         latency_cell(last, "agent_ms")),
        ("launch latency p50 / p99 ms (client)", latency_cell(first, "client_ms"),
         latency_cell(last, "client_ms")),
    ] + [
        (f"  stage p50 ms: {stage}", fmt(stage_p50(first, stage)),
         fmt(stage_p50(last, stage))) for stage in STAGE_NAMES
    ] + [
        ("tasks ended per s", fmt(rate(f0, f1), ".2f"), fmt(rate(l0, l1), ".2f")),
        ("agent RSS MiB at the window's end", fmt(mib(f1, "agent")), fmt(mib(l1, "agent"))),
        ("agent CPU ms per launch",) + both("agent", "cpu_ms"),
        ("agent's reaped children CPU ms per launch",) + both("agent", "children_cpu_ms"),
        ("agent open fds at the window's end", fmt(fds(f1, "agent"), "d"),
         fmt(fds(l1, "agent"), "d")),
    ]
    if target.shipper:
        rows.append(("shipper containers registered at the window's end",
                     fmt((f1 or {}).get("containers"), "d"),
                     fmt((l1 or {}).get("containers"), "d")))
        for who in ("supervisor", "worker"):
            rows += [
                (f"shipper {who} RSS MiB at the window's end", fmt(mib(f1, who)),
                 fmt(mib(l1, who))),
                (f"shipper {who} open fds at the window's end", fmt(fds(f1, who), "d"),
                 fmt(fds(l1, who), "d")),
                (f"shipper {who} CPU ms per launch",) + both(who, "cpu_ms"),
            ]
    return rows


def print_table(title, header, rows):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print(title)
    for row in [header] + rows:
        print("  " + "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))))


def drift(target, window):
    """(p50 latency, CPU per launch, RSS) of the last window minus the first's."""
    by_index = sorted(target.tasks.values(), key=lambda r: r["index"])
    p50 = [summary([r["agent_ms"] for r in part if "agent_ms" in r])
           for part in (by_index[:window], by_index[-window:])]
    f0, f1 = window_samples(target, window, last=False)
    l0, l1 = window_samples(target, window, last=True)
    cpu = [per_launch(f0, f1, "agent", "cpu_ms"), per_launch(l0, l1, "agent", "cpu_ms")]
    rss = [mib(f1, "agent"), mib(l1, "agent")]

    def delta(pair):
        return None if None in pair else pair[1] - pair[0]
    return {"latency p50 ms": delta([p["p50"] if p else None for p in p50]),
            "agent CPU ms per launch": delta(cpu), "agent RSS MiB": delta(rss)}


def report(targets, window, leaks, idle):
    """Prints every table; the number of leaks (all targets)."""
    for t in targets:
        failed = {}
        for r in t.tasks.values():
            if r.get("state") != "TASK_FINISHED":
                failed[r.get("state")] = failed.get(r.get("state"), 0) + 1
        print(f"\n== {t.name}: {len(t.tasks)} tasks, not finished: {failed or 0}")
        print_table(f"  first {window} vs last {window} launches",
                    ("", f"first {window}", f"last {window}"), window_rows(t, window))
        before, after = idle[t.name]
        rows = [("agent RSS MiB", fmt(mib(before, "agent")), fmt(mib(after, "agent"))),
                ("agent open fds", fmt(fds(before, "agent"), "d"),
                 fmt(fds(after, "agent"), "d"))]
        if t.shipper:
            rows.append(("shipper containers registered", fmt(before.get("containers"), "d"),
                         fmt(after.get("containers"), "d")))
            for who in ("supervisor", "worker"):
                rows += [(f"shipper {who} RSS MiB", fmt(mib(before, who)),
                          fmt(mib(after, who))),
                         (f"shipper {who} open fds", fmt(fds(before, who), "d"),
                          fmt(fds(after, who), "d"))]
        print_table("  at rest (no task), before the first launch and after the last",
                    ("", "before", "after"), rows)
    print(f"\n== drift, last {window} minus first {window} (rein beside the baseline's own)")
    drifts = {t.name: drift(t, window) for t in targets}
    names = [t.name for t in targets]
    rows = [(k,) + tuple(fmt(drifts[name][k], "+.2f") for name in names)
            for k in drifts[names[0]]]
    print_table("", ("",) + tuple(names), rows)
    total = 0
    print("\n== leaks after the last task ended (settled up to 90 s)")
    rows = []
    for kind in sorted({k for found in leaks.values() for k in found}):
        cells = []
        for name in names:
            found = leaks[name].get(kind)
            cells.append("n/a" if found is None else str(len(found)))
            total += len(found or [])
        rows.append((kind,) + tuple(cells))
    print_table("", ("",) + tuple(names), rows)
    for name in names:
        for kind, found in leaks[name].items():
            if found:
                print(f"  LEAK {name} {kind}: {found[:5]}{' ...' if len(found) > 5 else ''}")
    return total


def print_latency(targets, n):
    """One-at-a-time launches: min / median / max per agent, and the difference of
    the medians (the goal: the rein agent within 5 ms of the baseline's median)."""
    medians = {}
    print(f"\n== launch latency, one task at a time, interleaved, n={n} each")
    for t in targets:
        recs = list(t.tasks.values())
        for key, what in (("agent_ms", "agent 'Got assigned task' -> TASK_RUNNING"),
                          ("client_ms", "client ACCEPT sent -> TASK_RUNNING received")):
            data = [r[key] for r in recs if key in r]
            if not data:
                print(f"  {t.name:9} {what:44} no sample")
                continue
            medians[(t.name, key)] = statistics.median(data)
            print(f"  {t.name:9} {what:44} n={len(data)} min {min(data):7.1f} ms  "
                  f"median {statistics.median(data):7.1f} ms  max {max(data):7.1f} ms")
    names = [t.name for t in targets]
    for key in ("agent_ms", "client_ms"):
        if (names[0], key) in medians and (names[1], key) in medians:
            d = medians[(names[0], key)] - medians[(names[1], key)]
            print(f"  median {names[0]} - {names[1]} ({key[:-3]}): {d:+.1f} ms "
                  f"(goal <= +5 ms: {'met' if d <= 5 else 'not met'})")
    rows = []
    for stage in STAGE_NAMES:
        p50 = [stage_p50(list(t.tasks.values()), stage) for t in targets]
        diff = None if None in p50 else p50[0] - p50[1]
        rows.append((stage,) + tuple(fmt(v) for v in p50) + (fmt(diff, "+.1f"),))
    print_table("  where the time goes: median of each stage, ms",
                ("",) + tuple(names) + ("difference",), rows)

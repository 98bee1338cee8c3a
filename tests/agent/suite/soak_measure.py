# Part of the agent soak bench (tests/agent/soak); see its docstring.
"""What the soak bench reads from the machine: a process's CPU, memory and
descriptors, the agents' "Got assigned task" times, and what is left at the end."""

import json
import math
import os
import re
import statistics
import time

from .common import cgroup_points, child_cgroups

TICK = os.sysconf("SC_CLK_TCK")


def proc_sample(pid):
    """CPU (own and reaped children's, in ms), RSS (KiB) and open descriptors of a
    process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name may hold spaces: the fields follow its closing ')'.
            fields = f.read().rsplit(")", 1)[1].split()
        with open(f"/proc/{pid}/status") as f:
            rss = next((int(l.split()[1]) for l in f if l.startswith("VmRSS:")), 0)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return {"cpu_ms": (utime + stime) * 1000 / TICK,
            "children_cpu_ms": (cutime + cstime) * 1000 / TICK,
            "rss_kib": rss, "fds": fds}


def percentile(values, q):
    """The q-th percentile (nearest rank) of a non-empty list."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def summary(values):
    """p50 / p99 / max of a list, or None when it is empty."""
    if not values:
        return None
    return {"p50": statistics.median(values), "p99": percentile(values, 99),
            "max": max(values), "n": len(values)}


# glog's prefix: I[yyyy]mmdd hh:mm:ss.uuuuuu (newer glog writes the year).
PREFIX = re.compile(r"^I(\d{4})?(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+) ")
ASSIGNED = re.compile(r"Got assigned task '([^']+)'")
LAUNCHING = re.compile(r"Launching container (\S+) for executor '([^']+)'")
TRANSITION = re.compile(r"Transitioning the state of container (\S+) from (\w+) to (\w+) "
                        r"after ([\d.]+)(ns|us|ms|secs|mins)")
REGISTERED = re.compile(r"Got registration for executor '([^']+)'")
CLONING = re.compile(r"Launching container (\S+) and cloning")
UNIT_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "secs": 1e3, "mins": 6e4}
# The stages of a launch, from the agent log, in ms (a command task's executor id is
# its task id). "running" is the container's state: the executor process started.
STAGES = [
    ("assigned -> container launching", None),
    ("prepare (isolators, logger)", ("PREPARING", "CLONING")),
    ("clone (agent fork, launch helper)", ("CLONING", "ISOLATING")),
    ("isolate", ("ISOLATING", "FETCHING")),
    ("fetch", ("FETCHING", "RUNNING")),
    ("executor start -> registered", None),
]
# The last stage, from the TASK_RUNNING status the framework received.
LAST_STAGE = "registered -> TASK_RUNNING"
STAGE_NAMES = [name for name, _ in STAGES] + [LAST_STAGE]


def log_time(m):
    year, mon, day, hh, mm, ss, frac = m.groups()
    year = int(year) if year else time.localtime().tm_year
    t = time.mktime((year, int(mon), int(day), int(hh), int(mm), int(ss), 0, 0, -1))
    return t + int(frac) / 10 ** len(frac)


def agent_log_times(log_dir):
    """One pass over every INFO file of an agent (the log may hold tens of thousands
    of tasks): task id -> {"assigned": epoch s, "stages": {stage: ms}}."""
    tasks, containers, registered = {}, {}, {}
    for name in sorted(os.listdir(log_dir)):
        if ".INFO." not in name:
            continue
        with open(os.path.join(log_dir, name), errors="replace") as f:
            for line in f:
                if not ("Got assigned task" in line or "container" in line
                        or "Got registration" in line):
                    continue
                prefix = PREFIX.match(line)
                if not prefix:
                    continue
                if m := ASSIGNED.search(line):
                    tasks.setdefault(m.group(1), {})["assigned"] = log_time(prefix)
                elif m := CLONING.search(line):
                    c = containers.get(m.group(1))
                    if c is not None:
                        c["CLONING"] = log_time(prefix)
                elif m := LAUNCHING.search(line):
                    containers[m.group(1)] = {"task": m.group(2), "at": log_time(prefix)}
                elif m := TRANSITION.search(line):
                    c = containers.get(m.group(1))
                    if c is not None:
                        c[(m.group(2), m.group(3))] = float(m.group(4)) * UNIT_MS[m.group(5)]
                        c[m.group(3)] = log_time(prefix)
                elif m := REGISTERED.search(line):
                    registered.setdefault(m.group(1), log_time(prefix))
    for c in containers.values():
        rec = tasks.setdefault(c["task"], {})
        stages = {}
        if "assigned" in rec:
            stages[STAGES[0][0]] = (c["at"] - rec["assigned"]) * 1000
        for stage, edge in STAGES[1:5]:
            if edge in c:
                stages[stage] = c[edge]
            elif edge[0] in c and edge[1] in c:
                stages[stage] = (c[edge[1]] - c[edge[0]]) * 1000
        if "RUNNING" in c and c["task"] in registered:
            stages[STAGES[5][0]] = (registered[c["task"]] - c["RUNNING"]) * 1000
        rec["stages"] = stages
        rec["registered"] = registered.get(c["task"])
    return tasks


def cgroups_left(root):
    """Every cgroup below an agent's cgroups root, in every hierarchy mounted."""
    left = []
    for point in sorted(cgroup_points()):
        top = os.path.join(point, root)
        left += [os.path.join(top, d) for d in child_cgroups(top)]
    return left


def files_under(path):
    return [os.path.join(dp, f) for dp, _, fs in os.walk(path) for f in fs]


def entries(path):
    """The names in a directory (none when it does not exist)."""
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def disk_records(state_dir):
    """(file, record) of every disk isolator record under a module state dir."""
    out = []
    for path in files_under(os.path.join(state_dir, "disk")):
        try:
            with open(path) as f:
                out.append((path, json.load(f).get("record", {})))
        except (OSError, ValueError, AttributeError):
            out.append((path, {}))
    return out


def project_ids_held(state_dir):
    """Project ids the disk isolator's records still hold: (live, released but held
    until the agent removes the sandbox). Scan-backend records hold none."""
    live, held = [], []
    for path, record in disk_records(state_dir):
        backend = record.get("backend")
        if not (isinstance(backend, dict) and "quota" in backend):
            continue
        if record.get("released") is True and os.path.isdir(record.get("sandbox", "")):
            held.append(path)
        else:
            live.append(path)
    return live, held

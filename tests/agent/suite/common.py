# Part of the agent suite (tests/agent/run); see its docstring for the checks.
"""Helpers shared by every phase: results, HTTP, waiting, the machine's state."""

import http.client
import json
import os
import signal
import socket
import subprocess
import time


# tests/agent/suite/common.py -> the repository root.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CHECKS = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n", "o", "p",
          "q", "r", "s", "t", "u"]
CHECK_NAMES = {
    "a": "task processes in our net_cls cgroup with our classid",
    "b": "task status carries the classid",
    "c": "malformed label fails only that task",
    "d": "agent SIGKILL + restart recovers container and handle",
    "e": "no cgroup or state file left after the tasks end",
    "f": "debug panic fails only that task; agent keeps running",
    "g": "launch latency with and without the module",
    "h": "blkio: a 10MiB/s task's O_DIRECT writes run at 10MiB/s",
    "i": "blkio: /monitor/statistics shows the task's written bytes",
    "j": "disk: a task over its quota fails with REASON_CONTAINER_LIMITATION_DISK",
    "k": "disk: /monitor/statistics shows usage and quota",
    "l": "egress: a 10mbit task sends at 10 Mbit/s",
    "m": "egress: the HTB class survives an agent restart and goes with the task",
    "n": "logger: task stdout through the shipper survives an agent restart",
    "o": "blkio, disk, egress: no cgroup or state file left after the tasks end",
    "p": "logger: every line in Elasticsearch once, with metadata, across an agent restart",
    "q": "logger: burst of 50 tasks in one offer, tasks/s with and without the logger",
    "r": "tenant: non-UTF-8 labels, name and REIN_ value fail at most that task; the agent "
         "lives on and keeps launching",
    "s": "tenant: sandbox symlinks/FIFOs through the logger write nothing outside the "
         "sandbox across rotation, shipper and agent restarts; a victim's lines all kept",
    "t": "logger: a wedged shipper (worker stopped) delays no launch of a burst; the tasks' "
         "lines reach Elasticsearch once when it resumes",
    "u": "logger: a task's two log files (one rotated by rename, one by copytruncate) and "
         "stdout: every line in Elasticsearch once with its file, across an agent restart",
}
# The checks of the cgroup v2 agent (tests/vm/agent): the v1 checks that apply to
# it, and its own (capital letters).
V2_CHECKS = ["A", "h", "i", "j", "k", "R", "N", "D", "l", "m", "n", "p", "u", "o"]
V2_CHECK_NAMES = {
    "A": "v2: Mesos's launcher puts the task in <root>/<id>/leaf, and our io.max and "
         "io.weight are on <root>/<id>",
    "D": "disk: an enforce-mode task stops at its project quota (EDQUOT) and keeps running",
    "R": "v2: an agent SIGKILL + restart keeps a live container's io.max limit and quota",
    "N": "v2: a task group's nested container runs under our isolators, below its "
         "executor's cgroup",
}
V2_LEFT_OUT = {
    "abcdefg": "net_cls is a cgroup v1 controller (checked on the v1 host)",
    "q": "burst throughput is measured on the v1 host (too slow under software emulation)",
    "t": "the wedged-shipper burst is checked on the v1 host",
    "rs": "the hostile-tenant phase does not depend on the cgroup version (v1 host)",
}
CGROUP_V1 = "/sys/fs/cgroup"
CGROUP_V2 = "/sys/fs/cgroup"


def cgroup_mode():
    """"v1" where the cpu and freezer v1 hierarchies are mounted, "v2" where
    /sys/fs/cgroup is the unified hierarchy, else None."""
    if all(s in cgroup_v1_mounts() for s in ("cpu", "freezer")):
        return "v1"
    return "v2" if CGROUP_V2 in cgroup2_mounts() else None


def select_v2_checks():
    """Makes the v2 agent's checks the suite's (CHECKS is shared by every phase)."""
    CHECK_NAMES.update(V2_CHECK_NAMES)
    CHECKS[:] = V2_CHECKS


def cgroup2_mounts():
    """The mount points of the unified hierarchy."""
    with open("/proc/self/mountinfo") as f:
        return {left.split()[4] for left, _, right in (l.partition(" - ") for l in f)
                if right.split()[0] == "cgroup2"}


# The isolators' spare cgroups (module parameter spare_cgroups, default 4 per
# isolator): made ahead in each v1 hierarchy's cgroups root, named
# <prefix><isolator>-<n>, and kept while the agent runs, so they are not a
# container's leftovers; more than an isolator's stock are.
SPARE_PREFIX = ".rein-spare\x7f"
SPARE_STOCK = 4


def child_cgroups(top):
    """The cgroups directly below `top` that are left over: every one but the
    isolators' spares, unless an isolator has more spares there than its stock
    (hierarchies mounted together hold several isolators' spares)."""
    if not os.path.isdir(top):
        return []
    names = sorted(d for d in os.listdir(top) if os.path.isdir(os.path.join(top, d)))
    by_kind = {}
    for n in names:
        if n.startswith(SPARE_PREFIX):
            by_kind.setdefault(n[len(SPARE_PREFIX):].rpartition("-")[0], []).append(n)
    kept = {n for spares in by_kind.values() if len(spares) <= SPARE_STOCK for n in spares}
    return [n for n in names if n not in kept]


def cgroup_points():
    """Every cgroup hierarchy's mount point, v1 and v2."""
    return set(cgroup_v1_mounts().values()) | cgroup2_mounts()


def prepare_v2_root(root, controllers=("cpu", "io", "memory", "pids")):
    """As Mesos's own cgroup v2 tests prepare an agent's cgroups root: it exists and
    the controllers are enabled in the hierarchy root's and its own subtree_control
    (else the agent fails a CHECK or cannot enable a controller)."""
    top = os.path.join(CGROUP_V2, root)
    os.makedirs(top, exist_ok=True)
    available = read(os.path.join(CGROUP_V2, "cgroup.controllers")).split()
    enable = " ".join(f"+{c}" for c in controllers if c in available)
    for d in (CGROUP_V2, top):
        with open(os.path.join(d, "cgroup.subtree_control"), "w") as f:
            f.write(enable)


class Results:
    def __init__(self):
        self.outcomes = {}

    def record(self, check, ok, detail=""):
        # A check may be recorded from several steps; a failure sticks, and so does a
        # skip (a phase run for another check records its own unselected ones).
        if self.outcomes.get(check, ("pass",))[0] in ("fail", "skip"):
            return
        self.outcomes[check] = ("pass" if ok else "fail", detail)
        print(f"{'ok  ' if ok else 'FAIL'} ({check}) {CHECK_NAMES[check]}"
              + (f": {detail}" if detail else ""), flush=True)

    def skip_rest(self, why):
        for c in CHECKS:
            if c not in self.outcomes:
                self.outcomes[c] = ("skip", why)
                print(f"SKIP ({c}) {CHECK_NAMES[c]}: {why}", flush=True)

    def summary(self):
        counts = {"pass": 0, "fail": 0, "skip": 0}
        for kind, _ in self.outcomes.values():
            counts[kind] += 1
        return counts


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, predicate, timeout, interval=0.2):
    deadline = time.time() + timeout
    last_error = None
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last_error = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}"
                       + (f" (last error: {last_error})" if last_error else ""))


def settled_leftovers(leftovers, timeout=30):
    """Waits up to `timeout` s for `leftovers()` to return ([], []) (cgroups,
    state files); returns its last answer for the caller to record."""
    try:
        wait_for("cleanup", lambda: leftovers() == ([], []), timeout, 0.5)
    except TimeoutError:
        pass
    return leftovers()


def http_json(port, path, timeout=10):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET {path} -> {resp.status}: {body[:200]!r}")
        return loads_bytes(body)
    finally:
        conn.close()


def raw(data):
    """Bytes (possibly not UTF-8) as a str that json.dumps carries through `wire`."""
    return data.decode("utf-8", "surrogateescape")


def wire(body):
    """A JSON request body; strings made by `raw` go out as their original bytes."""
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogateescape")


def loads_bytes(data):
    """JSON from Mesos, which echoes a task's bytes unchanged (maybe not UTF-8)."""
    return json.loads(data.decode("utf-8", "surrogateescape"))


def http_ok(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status == 200
    finally:
        conn.close()


# ---------------------------------------------------------------------------------
# Processes and the machine's state.


class Daemon:
    def __init__(self, name, argv, log_dir, env):
        self.name, self.argv, self.log_dir, self.env = name, argv, log_dir, env
        self.proc = None

    def start(self):
        out = open(os.path.join(self.log_dir, f"{self.name}.out"), "ab")
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                     env=self.env, start_new_session=True)
        out.close()
        log(f"started {self.name} (pid {self.proc.pid})")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def sigkill(self):
        if self.alive():
            # Only the daemon itself: its executors must survive (recovery test).
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self):
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def cgroup_v1_mounts():
    """subsystem -> mount point of the v1 hierarchies."""
    mounts = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, options = right.split()[:3]
            if fstype != "cgroup":
                continue
            point = left.split()[4]
            for opt in options.split(","):
                if opt in ("cpu", "cpuacct", "freezer", "net_cls", "memory", "blkio",
                           "devices", "pids", "cpuset", "perf_event", "net_prio",
                           "hugetlb") or opt.startswith("name="):
                    mounts[opt] = point
    return mounts


def mount_points():
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def read(path):
    with open(path) as f:
        return f.read()


def pid_net_cls_path(pid):
    for line in read(f"/proc/{pid}/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if "net_cls" in controllers.split(","):
            return path
    return None


def kill_and_remove_cgroups(root_name):
    """Kills what is left in our cgroups and removes them, deepest first."""
    for point in cgroup_points():
        top = os.path.join(point, root_name)
        if not os.path.isdir(top):
            continue
        for _ in range(3):
            for dirpath, _, _ in os.walk(top):
                procs = os.path.join(dirpath, "cgroup.procs")
                if os.path.exists(procs):
                    for pid in read(procs).split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            time.sleep(0.3)
            for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -w[0].count("/")):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
            if not os.path.isdir(top):
                break
        if os.path.isdir(top):
            log(f"WARNING: could not remove {top}")



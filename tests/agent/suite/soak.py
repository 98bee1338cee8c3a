# Part of the agent soak bench (tests/agent/soak); see its docstring.
"""The soak bench's agents and driver: one master, an agent with every rein module
and the logger beside the baseline agent, short tasks alternated between them."""

import os
import subprocess
import time
import uuid

from .base import SuiteBase
from .common import Daemon, free_port, log, read, wait_for
from .egress import EgressPhase
from .logger import LoggerPhase
from .scheduler import TERMINAL
from .soak_measure import (
    LAST_STAGE, agent_log_times, cgroups_left, entries, files_under, proc_sample,
    project_ids_held)

TASK_CPUS, TASK_MEM, TASK_DISK = 0.1, 32, 10
# Every task prints to both streams (through the shipper on the rein agent) and ends.
COMMAND = "echo soak-out-$MESOS_TASK_ID; echo soak-err >&2"
# The labels every rein task carries: each module has work to do for it.
REIN_LABELS = {"rein.net.egress.rate": "10mbit", "rein.blkio.write_bps": "10MiB/s"}


def sampled(done, planned):
    """Whether a target is sampled when `done` of its tasks have ended: every 10
    (every one in runs of 400 or fewer), so any window's ends are within 10 tasks."""
    return planned <= 400 or done % 10 == 0


def window_of(n):
    """The window compared at both ends of a run of n tasks: 1,000, or a quarter of
    the run (in tens) when it is shorter."""
    quarter = max(1, n // 4)
    return min(1000, quarter - quarter % 10 if quarter >= 10 else quarter)


class Target:
    """One agent under test and what belongs to it."""

    def __init__(self, name, daemon, agent_id, root, labels, state_dir=None, shipper=None,
                 ship_state=None):
        self.name, self.daemon, self.id, self.root = name, daemon, agent_id, root
        self.labels, self.state_dir = labels, state_dir
        self.shipper, self.ship_state = shipper, ship_state
        self.tasks = {}  # task id -> record (see SoakBench.launch_some)
        self.inflight = {}  # task id -> time the ACCEPT was sent
        self.next_index = 0
        self.done = 0
        self.checkpoints = []  # samples taken when `done` reached given counts

    def worker_pid(self):
        try:
            return int(read(os.path.join(self.ship_state, "worker.pid")).strip())
        except (OSError, ValueError, TypeError):
            return None

    def sample(self):
        """The agent's and, with a logger, the shipper's CPU, memory and descriptors."""
        s = {"t": time.time(), "done": self.done, "agent": proc_sample(self.daemon.proc.pid)}
        if self.shipper:
            s["supervisor"] = proc_sample(self.shipper.proc.pid)
            pid = self.worker_pid()
            s["worker"] = proc_sample(pid) if pid else None
            # The worker holds about 11 descriptors per live container: its fds follow
            # this count, and only the count at rest tells a leak.
            s["containers"] = len(entries(os.path.join(self.ship_state, "containers")))
        return s


class SoakBench(EgressPhase, LoggerPhase, SuiteBase):
    def setup(self):
        """Master, the egress veth, the shipper and both agents; the targets."""
        log(f"temp dir {self.tmp}; cgroups roots {self.root_rein} (rein), {self.root_base} "
            "(baseline)")
        shipper = self.shipper_binary()
        if not shipper:
            raise FileNotFoundError("no rein-log-shipper built (cargo build --release -p "
                                    "rein-logger)")
        self.build_module()
        self.start_master()
        self.make_netns()
        sock = os.path.join(self.tmp, "shipper.sock")
        ship_state = os.path.join(self.tmp, "shipper-state")
        conf = os.path.join(self.tmp, "shipper.conf")
        with open(conf, "w") as f:
            f.write(f"socket = {sock}\nstate_dir = {ship_state}\n")
        sup = Daemon("shipper", [shipper, "run", "--config", conf], self.tmp, self.env)
        self.daemons.append(sup)
        sup.start()
        wait_for("the shipper's socket", lambda: os.path.exists(sock), 20)
        log(f"shipper {shipper}")
        state = os.path.join(self.tmp, "rein-state")
        common = {"state_dir": state, "cgroups_root": self.root_rein}
        manifest = self.write_manifest("modules-soak.json", {
            "rein_NetClsIsolator": dict(
                common, net_cls_primary_handle=hex(self.primary_eg),
                net_cls_secondary_handles="[0x10-0xfff]", mount_net_cls="true",
                egress_shaping="true", egress_devices=self.veth),
            "rein_BlkioIsolator": dict(common, allowed_devices="sandbox"),
            "rein_DiskIsolator": dict(common, scan_interval="1s", default_mode="kill"),
            "rein_ContainerLogger": {"shipper_socket": sock, "default_sink": "none",
                                     "allowed_sinks": "none"},
        })
        rein = self.agent("agent-rein", free_port(),
                          "filesystem/posix,cgroups/cpu,rein_DiskIsolator,"
                          "rein_NetClsIsolator,rein_BlkioIsolator", self.root_rein, manifest,
                          extra=["--container_logger=rein_ContainerLogger"])
        rein.start()
        base, base_id = self.baseline()
        self.targets = [
            Target("rein", rein, self.agent_id(rein), self.root_rein, REIN_LABELS, state,
                   sup, ship_state),
            Target("baseline", base, base_id, self.root_base, {}),
        ]
        log(f"agents registered: rein {self.targets[0].id} (net_cls + egress on "
            f"{self.veth}, blkio, disk, logger), baseline {base_id} (no rein module)")

    # -- launching --------------------------------------------------------------------

    def launch_some(self, target, k, prefix="soak"):
        """Up to k tasks on the target in one ACCEPT of the offers held for it, without
        waiting; the number launched (0 when no offer is held)."""
        sched = self.sched
        with sched.lock:
            offers = sched.offers.pop(target.id, [])
        if not offers:
            return 0
        have = {}
        for offer in offers:
            for res in offer.get("resources", []):
                if res.get("type") == "SCALAR":
                    have[res["name"]] = have.get(res["name"], 0) + res["scalar"]["value"]
        k = min(k, int(have.get("cpus", 0) / TASK_CPUS + 1e-6),
                int(have.get("mem", 0) / TASK_MEM), int(have.get("disk", 0) / TASK_DISK))
        if k <= 0:
            with sched.lock:
                sched.offers.setdefault(target.id, []).extend(offers)
            return 0
        tasks = []
        for _ in range(k):
            tid = f"{prefix}-{target.name}-{target.next_index}-{uuid.uuid4().hex[:4]}"
            target.tasks[tid] = {"index": target.next_index}
            target.next_index += 1
            task = {
                "name": tid, "task_id": {"value": tid}, "agent_id": {"value": target.id},
                "resources": [
                    {"name": n, "type": "SCALAR", "scalar": {"value": v}}
                    for n, v in (("cpus", TASK_CPUS), ("mem", TASK_MEM),
                                 ("disk", TASK_DISK))],
                "command": {"value": COMMAND, "shell": True},
            }
            if target.labels:
                task["labels"] = {"labels": [{"key": key, "value": v}
                                             for key, v in target.labels.items()]}
            tasks.append(task)
        sent = time.time()
        sched.call({"type": "ACCEPT", "accept": {
            "offer_ids": [o["id"] for o in offers],
            "operations": [{"type": "LAUNCH", "launch": {"task_infos": tasks}}],
            "filters": {"refuse_seconds": 0.0}}})
        for task in tasks:
            tid = task["task_id"]["value"]
            target.tasks[tid]["sent"] = sent
            target.inflight[tid] = sent
        return k

    def reap(self, target, stuck_after=300):
        """Records the in-flight tasks that ended (or never will); how many."""
        ended = 0
        now = time.time()
        with self.sched.lock:
            seen = {tid: list(self.sched.statuses.get(tid, [])) for tid in target.inflight}
        for tid, statuses in seen.items():
            final = next((s for s in statuses if s["state"] in TERMINAL), None)
            if final is None and now - target.inflight[tid] < stuck_after:
                continue
            rec = target.tasks[tid]
            running = next((s for s in statuses if s["state"] == "TASK_RUNNING"), None)
            if running:
                rec["running_ts"], rec["running_recv"] = running["timestamp"], running["_received"]
            rec["state"] = final["state"] if final else "NO_TERMINAL_STATUS"
            rec["message"] = (final or {}).get("message", "")
            del target.inflight[tid]
            target.done += 1
            ended += 1
        return ended

    def drive(self, n, inflight, deadline=None, progress_every=1000, stall=300):
        """Alternates launches between the targets, at most `inflight` tasks in flight
        on each, until each has run n or the clock passes `deadline` (epoch seconds;
        then no more are launched and those in flight end); samples each target as its
        count of ended tasks grows (`sampled`) and once more at the end."""
        for target in self.targets:
            target.checkpoints.append(target.sample())
        last_change, turn = time.time(), 0
        while any(t.next_index < n or t.inflight for t in self.targets):
            turn += 1
            if deadline and time.time() > deadline and n > max(
                    t.next_index for t in self.targets):
                n = max(t.next_index for t in self.targets)
                log(f"time limit reached: no more launches after {n} on an agent")
            order = self.targets if turn % 2 else list(reversed(self.targets))
            for target in order:
                free = inflight - len(target.inflight)
                if free > 0 and target.next_index < n:
                    if self.launch_some(target, min(free, n - target.next_index)):
                        last_change = time.time()
                before = target.done
                if self.reap(target):
                    last_change = time.time()
                for count in range(before + 1, target.done + 1):
                    if sampled(count, n):
                        target.checkpoints.append(target.sample())
                    if count % progress_every == 0:
                        self.progress(target, n)
            if time.time() - last_change > stall:
                raise TimeoutError(f"no launch and no task ended for {stall} s: " + ", ".join(
                    f"{t.name} {t.done}/{n} ended, {len(t.inflight)} in flight"
                    for t in self.targets))
            time.sleep(0.005)
        for target in self.targets:
            if target.checkpoints[-1]["done"] != target.done:
                target.checkpoints.append(target.sample())
            self.progress(target, n)

    def progress(self, target, n):
        s = target.sample()
        first = target.checkpoints[0]
        rate = s["done"] / max(1e-9, s["t"] - first["t"])
        agent = s["agent"] or {}
        failed = sum(1 for r in target.tasks.values()
                     if r.get("state") not in (None, "TASK_FINISHED"))
        extra = ""
        if target.shipper:
            w = s.get("worker") or {}
            extra = f", shipper worker RSS {w.get('rss_kib', 0) / 1024:.1f} MiB fds {w.get('fds')}"
        log(f"{target.name}: {s['done']}/{n} ended ({failed} not finished), "
            f"{rate:.2f} tasks/s, agent RSS {agent.get('rss_kib', 0) / 1024:.1f} MiB, "
            f"CPU {agent.get('cpu_ms', 0) / 1000:.1f} s{extra}")

    def resolve_latencies(self):
        """Agent-side latency ("Got assigned task" -> TASK_RUNNING's timestamp), the
        client's (ACCEPT sent -> TASK_RUNNING received) and the stages of the first,
        in ms, on every record."""
        for target in self.targets:
            times = agent_log_times(os.path.join(target.daemon.dir, "logs"))
            for tid, rec in target.tasks.items():
                found = times.get(tid, {})
                rec["stages"] = dict(found.get("stages", {}))
                if "running_ts" not in rec:
                    continue
                rec["client_ms"] = (rec["running_recv"] - rec["sent"]) * 1000
                if "assigned" in found:
                    rec["agent_ms"] = (rec["running_ts"] - found["assigned"]) * 1000
                if found.get("registered"):
                    rec["stages"][LAST_STAGE] = (rec["running_ts"] - found["registered"]) * 1000

    # -- one launch at a time ---------------------------------------------------------

    def sequential(self, n):
        """n launches on each target, one task at a time, alternating (the order
        reversed every round) so both see the same machine load."""
        for i in range(n):
            order = self.targets if i % 2 == 0 else list(reversed(self.targets))
            for target in order:
                wait_for(f"an offer from {target.name}",
                         lambda t=target: self.launch_some(t, 1, prefix="lat"), 60, 0.01)
                deadline = time.time() + 120
                while target.inflight and time.time() < deadline:
                    self.reap(target, stuck_after=120)
                    time.sleep(0.005)

    # -- what is left -----------------------------------------------------------------

    def tc_lines(self, kind):
        out = subprocess.run(["tc", kind, "show", "dev", self.veth], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True).stdout
        return [line for line in out.splitlines() if line.strip()]

    def leaks(self, target, filters_before):
        """name -> list of what the target's tasks left behind."""
        found = {"cgroups": cgroups_left(target.root)}
        run_dir = os.path.join(target.daemon.dir, "run", "containers")
        found["Mesos runtime container dirs"] = entries(run_dir)
        if target.state_dir:
            live, held = project_ids_held(target.state_dir)
            found["module state files"] = [f for f in files_under(target.state_dir)
                                           if f not in held]
            found["project ids held"] = live
            found["tc classes (ours)"] = [
                cid for cid, _ in self.classes()
                if cid >> 16 == self.primary_eg and 0x10 <= cid & 0xffff <= 0xfff]
            now = self.tc_lines("filter")
            found["tc filters added"] = now[len(filters_before):] if len(now) > len(
                filters_before) else []
            found["shipper container state dirs"] = entries(
                os.path.join(target.ship_state, "containers"))
            found["shipper unregistered dirs"] = entries(
                os.path.join(target.ship_state, "unregistered"))
        return found

    def settle_leaks(self, filters_before, timeout=90):
        """Waits up to `timeout` s for every target to be clean; the last findings."""
        def clean():
            return all(not v for t in self.targets for v in self.leaks(t, filters_before)
                       .values())
        try:
            wait_for("every container cleaned up", clean, timeout, 1)
        except TimeoutError:
            pass
        return {t.name: self.leaks(t, filters_before) for t in self.targets}

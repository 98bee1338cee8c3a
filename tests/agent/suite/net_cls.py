# Part of the agent suite (tests/agent/run); see its docstring for the checks.
"""Checks (a)-(g): the net_cls isolator beside a baseline agent."""

import os
import re
import statistics
import time
import uuid

from .common import (
    child_cgroups, free_port, http_json, log, pid_net_cls_path, read, settled_leftovers,
    wait_for)
from .scheduler import TERMINAL


class NetClsPhase:
    def run_net_cls(self):
        """(a)-(g) on agent-rein (net_cls) beside the baseline agent."""
        r = self.results
        manifest = self.write_manifest()
        rein = self.agent("agent-rein", free_port(),
                          "filesystem/posix,cgroups/cpu,rein_NetClsIsolator",
                          self.root_rein, manifest)
        rein.start()
        base, base_id = self.baseline()
        rein_id = self.agent_id(rein)
        log(f"agents registered: rein {rein_id}, baseline {base_id}")

        # (a) (b) A labelled task: its processes and its status.
        main = "main-" + uuid.uuid4().hex[:6]
        self.sched.launch(rein_id, main, "echo $$ > task.pid; exec sleep 600",
                          {"team": "rein-suite", "rein.debug.panic": "false"})
        running = self.sched.wait_state(main, ("TASK_RUNNING",) + TERMINAL, 90)
        if running["state"] != "TASK_RUNNING":
            raise RuntimeError(f"main task: {running['state']}: {running.get('message')}")
        container, sandbox = wait_for("the main task's container",
                                      lambda: self.container_of(rein, main), 20)
        pid = int(wait_for("task.pid", lambda: read(os.path.join(sandbox, "task.pid")).strip(),
                           20))
        cg = self.net_cls_dir(container)
        classid = int(read(os.path.join(cg, "net_cls.classid")))
        procs = read(os.path.join(cg, "cgroup.procs")).split()
        in_cgroup = pid_net_cls_path(pid) == f"/{self.root_rein}/{container}"
        r.record("a", in_cgroup and str(pid) in procs and classid >> 16 == self.primary
                 and classid & 0xffff != 0,
                 f"pid {pid} in {pid_net_cls_path(pid)}, classid {classid:#x}, "
                 f"{len(procs)} processes in the cgroup")
        status_classid = (running.get("container_status", {}).get("cgroup_info", {})
                          .get("net_cls", {}).get("classid"))
        master_tasks = http_json(self.master_port, "/tasks")["tasks"]
        master_classids = [
            s.get("container_status", {}).get("cgroup_info", {}).get("net_cls", {})
            .get("classid") for t in master_tasks if t["id"] == main
            for s in t.get("statuses", [])]
        r.record("b", status_classid == classid and classid in master_classids,
                 f"TASK_RUNNING status classid {status_classid}, master /tasks {master_classids}")

        # (c) A malformed label fails only that task.
        bad = "badlabel-" + uuid.uuid4().hex[:6]
        self.sched.launch(rein_id, bad, "sleep 600", {"rein.net.egress.rate": "fast"})
        failed = self.sched.wait_state(bad, TERMINAL, 60)
        message = failed.get("message", "")
        main_ok = self.sched.states(main)[-1] == "TASK_RUNNING"
        r.record("c", failed["state"] == "TASK_FAILED" and "rein.net.egress.rate" in message
                 and "fast" in message and main_ok and os.path.exists(f"/proc/{pid}"),
                 f"{failed['state']}: {message!r}; main task still {self.sched.states(main)[-1]}")

        # (f) A panic in prepare fails only that task; the agent lives on.
        boom = "panic-" + uuid.uuid4().hex[:6]
        self.sched.launch(rein_id, boom, "sleep 600", {"rein.debug.panic": "true"})
        failed = self.sched.wait_state(boom, TERMINAL, 60)
        message = failed.get("message", "")
        time.sleep(1)
        health = http_json(rein.port, "/state").get("id") == rein_id
        r.record("f", failed["state"] == "TASK_FAILED" and "panicked in prepare" in message
                 and rein.alive() and health and self.sched.states(main)[-1] == "TASK_RUNNING",
                 f"{failed['state']}: {message!r}; agent alive {rein.alive()}, /state {health}")

        # (d) SIGKILL the agent; restart it on the same work_dir.
        rein.sigkill()
        log("agent-rein killed with SIGKILL")
        time.sleep(1)
        self.sched.drop_offers(rein_id)
        survived = os.path.exists(f"/proc/{pid}")
        rein.start()

        def reregistered():
            for a in http_json(self.master_port, "/slaves")["slaves"]:
                if a["id"] == rein_id and a.get("active"):
                    return True
            return False
        wait_for("agent-rein to re-register", reregistered, 90, 0.5)
        log("agent-rein re-registered")

        def recovered_status():
            for c in http_json(rein.port, "/containers"):
                if c.get("container_id") == container:
                    return c.get("status", {}).get("cgroup_info", {}).get(
                        "net_cls", {}).get("classid")
            return None
        try:
            after = wait_for("the recovered container's status", recovered_status, 60, 0.5)
        except TimeoutError as e:
            after = f"none ({e})"
        still = pid_net_cls_path(pid) == f"/{self.root_rein}/{container}" and \
            str(pid) in read(os.path.join(cg, "cgroup.procs")).split()
        # A new container must get another handle: the old one stayed reserved.
        second = "second-" + uuid.uuid4().hex[:6]
        self.sched.launch(rein_id, second, "sleep 600", {"team": "rein-suite"}, timeout=60)
        st2 = self.sched.wait_state(second, ("TASK_RUNNING",) + TERMINAL, 90)
        classid2 = (st2.get("container_status", {}).get("cgroup_info", {})
                    .get("net_cls", {}).get("classid"))
        r.record("d", survived and after == classid and still
                 and st2["state"] == "TASK_RUNNING" and classid2 not in (None, classid),
                 f"task survived {survived}; /containers classid after restart {after} "
                 f"(before {classid}); still in cgroup {still}; new task's classid {classid2}")

        # (g) Launch latency, interleaved between the two agents.
        n = int(os.environ.get("REIN_AGENT_LATENCY_N", "20"))
        samples = {"with rein_NetClsIsolator": [], "without (baseline agent)": []}
        client = {k: [] for k in samples}
        for i in range(n):
            order = [(rein, rein_id, "with rein_NetClsIsolator", "rein"),
                     (base, base_id, "without (baseline agent)", "base")]
            if i % 2:
                order.reverse()
            for daemon, aid, label, short in order:
                tid = f"lat-{short}-{i}-{uuid.uuid4().hex[:4]}"
                sent = self.sched.launch(aid, tid, "true", {"team": "rein-suite"}, timeout=60)
                st = self.sched.wait_state(tid, ("TASK_RUNNING",) + TERMINAL, 60)
                self.sched.wait_state(tid, TERMINAL, 60)
                if st["state"] != "TASK_RUNNING":
                    raise RuntimeError(f"latency task {tid}: {st['state']} {st.get('message')}")
                assigned = self.assigned_time(daemon, tid)
                samples[label].append((st["timestamp"] - assigned) * 1000)
                client[label].append((st["_received"] - sent) * 1000)
        lines = []
        for label in samples:
            for what, data in (("agent 'Got assigned task' -> TASK_RUNNING", samples[label]),
                               ("client ACCEPT sent -> TASK_RUNNING received", client[label])):
                lines.append(f"  {label:26} {what:44} n={len(data)} "
                             f"min {min(data):7.1f} ms  median {statistics.median(data):7.1f} ms"
                             f"  max {max(data):7.1f} ms")
        print("launch latency:\n" + "\n".join(lines), flush=True)
        r.record("g", all(len(v) == n for v in samples.values()), f"n={n} each, interleaved")

        # (e) End the tasks: nothing of ours may stay behind.
        for tid in (main, second):
            self.sched.kill(tid, rein_id)
        for tid in (main, second):
            self.sched.wait_state(tid, TERMINAL, 60)
        state_dir = os.path.join(self.tmp, "rein-state")

        def leftovers():
            groups = child_cgroups(self.net_cls_dir())
            files = [os.path.join(dp, f) for dp, _, fs in os.walk(state_dir) for f in fs]
            return groups, files
        groups, files = settled_leftovers(leftovers)
        r.record("e", groups == [] and files == [] and not os.path.exists(f"/proc/{pid}"),
                 f"cgroups left {groups}, state files left {files}")
    def assigned_time(self, daemon, task_id):
        """The agent log's "Got assigned task" time of a task, in epoch seconds."""
        # glog's prefix: I[yyyy]mmdd hh:mm:ss.uuuuuu (newer glog writes the year).
        pattern = re.compile(r"^I(\d{4})?(\d\d)(\d\d) (\d\d):(\d\d):(\d\d)\.(\d+) "
                             r".*Got assigned task '" + re.escape(task_id) + "'", re.M)

        def find():
            m = pattern.search(self.agent_log(daemon))
            if not m:
                return None
            year, mon, day, hh, mm, ss, frac = m.groups()
            year = int(year) if year else time.localtime().tm_year
            t = time.mktime((year, int(mon), int(day), int(hh), int(mm), int(ss), 0, 0, -1))
            return t + int(frac) / 10 ** len(frac)
        return wait_for(f"'Got assigned task {task_id}' in the agent log", find, 10, 0.1)


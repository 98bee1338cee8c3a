# Part of the agent suite (tests/agent/run); see its docstring for the checks.
"""Checks (h)-(k), (o): the blkio and disk isolators on one agent."""

import json
import os
import re
import uuid

from .common import (
    CGROUP_V2, cgroup_points, child_cgroups, free_port, http_json, log, read,
    settled_leftovers, wait_for)
from .scheduler import TERMINAL


class BlkioDiskPhase:
    # -- blkio and disk: one more agent with both modules ---------------------------

    def statistics_of(self, daemon, task_id):
        """The /monitor/statistics entry of a command task (executor id = task id)."""
        for entry in http_json(daemon.port, "/monitor/statistics"):
            if entry.get("executor_id") == task_id:
                return entry.get("statistics", {})
        return None

    def run_blkio_disk(self):
        r = self.results
        common = {"state_dir": os.path.join(self.tmp, "rein-state-io"),
                  "cgroups_root": self.root_io}
        manifest = self.write_manifest("modules-io.json", {
            "rein_BlkioIsolator": dict(common, allowed_devices="sandbox"),
            "rein_DiskIsolator": dict(common, scan_interval="1s", default_mode="kill"),
        })
        io = self.agent("agent-io", free_port(),
                        "filesystem/posix,cgroups/cpu,rein_BlkioIsolator,rein_DiskIsolator",
                        self.root_io, manifest)
        io.start()
        self.io_agent = io
        io_id = self.agent_id(io)
        log(f"agent-io registered: {io_id}")

        # (h) (i) 20 MiB of O_DIRECT writes at 10 MiB/s, then a pause to read statistics.
        task = "blkio-" + uuid.uuid4().hex[:6]
        labels = {"rein.blkio.write_bps": "10MiB/s"}
        if self.mode == "v2":
            labels["rein.blkio.weight"] = "50"  # io.weight (below the default cap, 100)
        self.sched.launch(io_id, task, "dd if=/dev/zero of=f bs=1M count=20 oflag=direct "
                          "2>&1; echo dd-done; sleep 8", labels)
        st = self.sched.wait_state(task, ("TASK_RUNNING",) + TERMINAL, 90)
        if st["state"] != "TASK_RUNNING":
            raise RuntimeError(f"blkio task: {st['state']}: {st.get('message')}")
        container, sandbox = wait_for("the blkio task's container",
                                      lambda: self.container_of(io, task), 20)
        if self.wants("A"):
            self.check_v2_placement(container)
        out = wait_for("dd's report", lambda: "dd-done" in read(
            os.path.join(sandbox, "stdout")) and read(os.path.join(sandbox, "stdout")), 60)

        def written():
            stats = self.statistics_of(io, task) or {}
            total = 0
            for dev in stats.get("blkio_statistics", {}).get("throttling", []):
                for v in dev.get("io_service_bytes", []):
                    if v.get("op") == "WRITE":
                        total += v.get("value", 0)
            return total
        try:
            wrote = wait_for("blkio statistics", lambda: written() >= 20 << 20, 6, 0.5) \
                and written()
        except TimeoutError:
            wrote = written()
        m = re.search(r"(\d+) bytes .* copied, ([\d.]+) s", out)
        if m:
            nbytes, secs = int(m.group(1)), float(m.group(2))
            rate = nbytes / secs / (1 << 20)
            r.record("h", nbytes == 20 << 20 and 8.5 <= rate <= 11.5,
                     f"dd wrote {nbytes} bytes in {secs:.2f} s = {rate:.2f} MiB/s "
                     "(limit 10 MiB/s, accepted 8.5-11.5)")
        else:
            r.record("h", False, f"no dd report in the task's output: {out[-300:]!r}")
        r.record("i", wrote >= 20 << 20,
                 f"/monitor/statistics blkio throttling WRITE bytes {wrote} (>= {20 << 20})")
        self.sched.wait_state(task, TERMINAL, 60)

        # (k) A task under its quota: usage and quota in the statistics.
        under = "diskok-" + uuid.uuid4().hex[:6]
        under_labels = {"rein.disk.mode": "kill"}
        if self.wants("R"):
            under_labels["rein.blkio.read_bps"] = "20MiB/s"
        self.sched.launch(io_id, under, "dd if=/dev/zero of=f bs=1M count=3 conv=fsync "
                          "2>/dev/null; sleep 600", under_labels, disk=10)
        # (j) A task writing 30 MB with a quota of 10 MB, in kill mode. The usage in the
        # message is what the scan saw when it fired: over the quota, not always all 30 MB.
        over = "diskover-" + uuid.uuid4().hex[:6]
        self.sched.launch(io_id, over, "dd if=/dev/zero of=f bs=1M count=30 conv=fsync "
                          "2>/dev/null; sleep 600", {"rein.disk.mode": "kill"}, disk=10)
        for tid in (under, over):
            st = self.sched.wait_state(tid, ("TASK_RUNNING",) + TERMINAL, 90)
            if st["state"] != "TASK_RUNNING":
                raise RuntimeError(f"disk task {tid}: {st['state']}: {st.get('message')}")
        failed = self.sched.wait_state(over, TERMINAL, 60)
        message = failed.get("message", "")
        numbers = re.findall(r"([\d.]+) MB", message)
        r.record("j", failed["state"] == "TASK_FAILED"
                 and failed.get("reason") == "REASON_CONTAINER_LIMITATION_DISK"
                 and len(numbers) >= 2 and float(numbers[0]) > float(numbers[1]) and
                 abs(float(numbers[1]) - 10.0) < 0.6,
                 f"{failed['state']} {failed.get('reason')}: {message!r}")

        def disk_stats():
            stats = self.statistics_of(io, under) or {}
            used, limit = stats.get("disk_used_bytes"), stats.get("disk_limit_bytes")
            return (used, limit) if used is not None and used >= 3 << 20 else None
        try:
            used, limit = wait_for("disk statistics", disk_stats, 20, 0.5)
        except TimeoutError:
            stats = self.statistics_of(io, under) or {}
            used, limit = stats.get("disk_used_bytes"), stats.get("disk_limit_bytes")
        alive = self.sched.states(under)[-1] == "TASK_RUNNING"
        r.record("k", used is not None and (3 << 20) <= used < (10 << 20)
                 and limit == 10 << 20 and alive,
                 f"disk_used_bytes {used}, disk_limit_bytes {limit} (quota {10 << 20}); "
                 f"task still {self.sched.states(under)[-1]}")
        if self.wants("R"):
            self.check_v2_recovery(io, io_id, under)
        self.sched.kill(under, io_id)
        self.sched.wait_state(under, TERMINAL, 60)
        if self.wants("N"):
            self.check_nested(io, io_id)
        if self.wants("D"):
            self.check_enforce(io_id)

    def check_v2_placement(self, container):
        """(A) Mesos's cgroups2 layout: processes in <root>/<id>/leaf, our limit on
        <root>/<id> (the cgroup Mesos's launcher created or accepted)."""
        top = os.path.join(CGROUP_V2, self.root_io, container)
        procs = wait_for("the task's processes in leaf", lambda: read(
            os.path.join(top, "leaf", "cgroup.procs")).split(), 20)
        io_max = read(os.path.join(top, "io.max"))
        io_weight = read(os.path.join(top, "io.weight"))
        in_proc = [p for p in procs if read(f"/proc/{p}/cgroup").strip().endswith(
            f"/{self.root_io}/{container}/leaf")]
        self.results.record(
            "A", bool(in_proc) and "wbps=10485760" in io_max
            and "default 50" in io_weight.splitlines(),
            f"{len(procs)} processes in {top}/leaf ({len(in_proc)} report it in "
            f"/proc/PID/cgroup); io.max {io_max.strip()!r}; io.weight {io_weight.strip()!r}")

    def check_v2_recovery(self, io, io_id, task):
        """(R) SIGKILL + restart of the agent: a live container keeps its io.max
        limit and its quota (usage and limit still reported), and the task runs."""
        container, _ = self.container_of(io, task)
        io_max = os.path.join(CGROUP_V2, self.root_io, container, "io.max")
        before = read(io_max).strip()
        self.restart_agent(io, io_id)
        wait_for("agent-io to recover the task", lambda: self.container_of(io, task), 60, 0.5)

        def recovered():
            stats = self.statistics_of(io, task) or {}
            return stats.get("disk_limit_bytes") == 10 << 20 and stats
        try:
            stats = wait_for("the recovered container's statistics", recovered, 30, 0.5)
        except TimeoutError:
            stats = self.statistics_of(io, task) or {}
        after = read(io_max).strip() if os.path.exists(io_max) else None
        running = self.sched.states(task)[-1] == "TASK_RUNNING"
        self.results.record(
            "R", "rbps=20971520" in before and after == before and running
            and stats.get("disk_limit_bytes") == 10 << 20
            and (stats.get("disk_used_bytes") or 0) >= 3 << 20,
            f"io.max before {before!r}, after {after!r}; disk_used_bytes "
            f"{stats.get('disk_used_bytes')}, disk_limit_bytes "
            f"{stats.get('disk_limit_bytes')} after the restart; task still "
            f"{self.sched.states(task)[-1]}")

    def check_nested(self, io, io_id):
        """(N) A task group (the default executor, the task a nested container) with
        blkio and disk labels runs; its process sits in the executor container's
        cgroup subtree (Mesos's nested containers share their parent's cgroups by
        default: <root>/<executor container>/leaf); it ends and leaves nothing (o)."""
        task = "nested-" + uuid.uuid4().hex[:6]
        self.sched.launch_group(io_id, task, "echo nested-up; exec sleep 600",
                                {"rein.blkio.write_bps": "10MiB/s", "rein.disk.mode": "kill"},
                                disk=10)
        st = self.sched.wait_state(task, ("TASK_RUNNING",) + TERMINAL, 120)
        detail = f"{st['state']}: {st.get('message', '')}"
        placed = []
        if st["state"] == "TASK_RUNNING":
            parents = [c["container_id"] for c in http_json(io.port, "/containers")]
            top = os.path.join(CGROUP_V2, self.root_io)

            def sleeping():
                found = []
                for dirpath, _, files in os.walk(top):
                    if "cgroup.procs" not in files:
                        continue
                    for p in read(os.path.join(dirpath, "cgroup.procs")).split():
                        try:
                            if read(f"/proc/{p}/cmdline").split("\0")[:2] == ["sleep", "600"]:
                                found.append(os.path.relpath(dirpath, top))
                        except OSError:
                            pass
                return found
            placed = wait_for("the nested task's sleep", sleeping, 20)
            placed = [d for d in placed if d.split("/")[0] in parents]
            detail += f"; executor containers {parents}; the task's sleep in {placed}"
        self.results.record("N", st["state"] == "TASK_RUNNING" and bool(placed), detail)
        self.sched.kill(task, io_id)
        self.sched.wait_state(task, TERMINAL, 60)

    def check_enforce(self, io_id):
        """(D) enforce mode on a project-quota filesystem: the write fails at the
        quota (EDQUOT, or ENOSPC from XFS's project quota) and the task lives on."""
        if os.environ.get("REIN_AGENT_QUOTA_FS") != "1":
            self.skip("D", "the sandbox is not on a project-quota filesystem "
                      "(REIN_AGENT_QUOTA_FS=1; the VM lane's agent runs it)")
            return
        task = "diskenf-" + uuid.uuid4().hex[:6]
        # The task's stdout is in its sandbox, under the same quota: dd's report is
        # kept in the shell and printed once the file is gone and there is room.
        self.sched.launch(io_id, task, "out=$(dd if=/dev/zero of=f bs=1M count=30 "
                          "conv=fsync 2>&1); rc=$?; size=$(stat -c %s f); rm -f f; "
                          "echo \"$out\"; echo dd-rc=$rc size=$size; sleep 600",
                          {"rein.disk.mode": "enforce"}, disk=8)
        st = self.sched.wait_state(task, ("TASK_RUNNING",) + TERMINAL, 90)
        if st["state"] != "TASK_RUNNING":
            raise RuntimeError(f"enforce task: {st['state']}: {st.get('message')}")
        try:
            _, sandbox = wait_for("the enforce task's container",
                                  lambda: self.container_of(self.io_agent, task), 20)
            stdout = os.path.join(sandbox, "stdout")
            try:
                wait_for("dd's end", lambda: "dd-rc=" in read(stdout), 90)
            except TimeoutError:
                pass
            out = read(stdout)
            m = re.search(r"dd-rc=\d+ size=(\d+)", out)
            size = int(m.group(1)) if m else "unknown"
            stats = self.statistics_of(self.io_agent, task) or {}
            refused = "Disk quota exceeded" in out or "No space left" in out
            alive = self.sched.states(task)[-1] == "TASK_RUNNING"
            self.results.record(
                "D", refused and "dd-rc=1" in out and isinstance(size, int)
                and size <= 8 << 20 and alive,
                f"dd: {out.strip()[-220:]!r}; file {size} bytes (quota {8 << 20}); "
                f"statistics used {stats.get('disk_used_bytes')} limit "
                f"{stats.get('disk_limit_bytes')}; task states {self.sched.states(task)}")
        finally:
            self.sched.kill(task, io_id)
            self.sched.wait_state(task, TERMINAL, 60)

    # -- egress shaping: a veth to a network namespace of our own ------------------

    def check_io_egress_leftovers(self):
        """(o) The third and fourth agents' tasks have ended: nothing may be left."""
        state_dirs = [os.path.join(self.tmp, d) for d in ("rein-state-io", "rein-state-egress")]

        def leftovers():
            groups = []
            for point in cgroup_points():
                for root in (self.root_io, self.root_eg):
                    top = os.path.join(point, root)
                    groups += [os.path.join(top, d) for d in child_cgroups(top)]
            files = [os.path.join(dp, f) for sd in state_dirs
                     for dp, _, fs in os.walk(sd) for f in fs]
            return groups, [f for f in files if not held_for_gc(f)]

        def held_for_gc(path):
            # A project id the disk isolator holds, by design, until the agent
            # garbage-collects the sandbox (something in it still charges the id
            # bytes the walk cannot take back, e.g. Mesos's tasks/<id> symlink in a
            # task group's sandbox on ext4, whose target is too long to be inline).
            try:
                with open(path) as f:
                    record = json.load(f).get("record", {})  # {boot_id, record}
            except (OSError, ValueError, AttributeError):
                return False
            return (os.sep + "disk" + os.sep in path and record.get("released") is True
                    and os.path.isdir(record.get("sandbox", "")))
        groups, files = settled_leftovers(leftovers)
        held = [f for sd in state_dirs for dp, _, fs in os.walk(sd) for f in fs
                if held_for_gc(os.path.join(dp, f))]
        self.results.record("o", groups == [] and files == [],
                            f"cgroups left {groups}, state files left {files}; project ids "
                            f"held until the agent removes their sandbox: {len(held)}")


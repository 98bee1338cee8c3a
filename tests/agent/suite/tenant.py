# Part of the agent suite (tests/agent/run); see its docstring for the checks.
"""Checks (r), (s): a hostile tenant on an agent with --switch_user."""

import json
import os
import pwd
import re
import signal
import subprocess
import uuid

from .common import Daemon, free_port, log, raw, read, wait_for
from .scheduler import TERMINAL


class TenantPhase:
    # -- (r) (s) a hostile tenant: --switch_user on, tasks as an unprivileged user ------

    BAD = raw(b"\xff\xfe\xc3(-not-utf-8")

    def run_tenant(self):
        """One more agent as operators run it: --switch_user (tasks as
        REIN_AGENT_TASK_USER, default nobody, in sandboxes that user owns), every
        isolator module and, when a shipper is built, the logger with small rotations."""
        user = os.environ.get("REIN_AGENT_TASK_USER", "nobody")
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            for c in "rs":
                self.skip(c, f"task user {user!r} does not exist (REIN_AGENT_TASK_USER)")
            return
        if pw.pw_uid == 0:
            for c in "rs":
                self.skip(c, f"task user {user!r} is root (REIN_AGENT_TASK_USER)")
            return
        # The task user must reach its sandbox under our 0700 temp dir, and run the
        # executor: an install under a 0700 directory fails every task.
        os.chmod(self.tmp, 0o711)
        executor = os.path.join(self.mesos, "libexec", "mesos", "mesos-executor")
        probe = subprocess.run(["test", "-x", executor], user=pw.pw_uid, group=pw.pw_gid,
                               extra_groups=[])
        if probe.returncode != 0:
            raise RuntimeError(f"{executor} is not executable by {user}: install Mesos "
                               "where the task user can reach it (not under /root)")
        shipper = self.shipper_binary()
        state = os.path.join(self.tmp, "rein-state-tenant")
        modules = {
            "rein_NetClsIsolator": {
                "state_dir": state, "cgroups_root": self.root_tn,
                "net_cls_primary_handle": hex(self.primary_tn),
                "net_cls_secondary_handles": "[0x1-0xfff]", "mount_net_cls": "true"},
            "rein_BlkioIsolator": {"state_dir": state, "cgroups_root": self.root_tn},
            "rein_DiskIsolator": {"state_dir": state, "cgroups_root": self.root_tn,
                                  "default_mode": "account", "scan_interval": "1s",
                                  "project_ids": "[20000-20999]"},
        }
        extra, sup = [], None
        if shipper:
            sock = os.path.join(self.tmp, "shipper-tenant.sock")
            ship_state = os.path.join(self.tmp, "shipper-tenant-state")
            conf = os.path.join(self.tmp, "shipper-tenant.conf")
            with open(conf, "w") as f:
                # Small files: the attack meets many rotations.
                f.write(f"socket = {sock}\nstate_dir = {ship_state}\n"
                        "rotate_max_bytes = 64KiB\nrotate_keep = 3\n")
            sup = Daemon("shipper-tenant", [shipper, "run", "--config", conf], self.tmp,
                         self.env)
            self.daemons.append(sup)
            sup.start()
            wait_for("the tenant shipper's socket", lambda: os.path.exists(sock), 20)
            sup.state = ship_state
            modules["rein_ContainerLogger"] = {
                "shipper_socket": sock, "default_sink": "none", "allowed_sinks": "none"}
            extra = ["--container_logger=rein_ContainerLogger"]
        manifest = self.write_manifest("modules-tenant.json", modules)
        tn = self.agent("agent-tenant", free_port(),
                        "filesystem/posix,cgroups/cpu,rein_DiskIsolator,"
                        "rein_NetClsIsolator,rein_BlkioIsolator", self.root_tn, manifest,
                        extra=extra, switch_user=True)
        tn.start()
        tn_id = self.agent_id(tn)
        log(f"agent-tenant registered: {tn_id} (--switch_user, tasks as {user} "
            f"uid {pw.pw_uid}; logger {'on' if shipper else 'off: no shipper built'})")
        if shipper and self.wants("s"):
            self.run_symlink_attack(tn, tn_id, user, sup)
        elif self.wants("s"):
            self.skip("s", "no rein-log-shipper built (cargo build --release -p rein-logger)")
        if self.wants("r"):
            self.run_non_utf8(tn, tn_id, user, logger=bool(shipper))

    def start_task(self, agent_id, task_id, command, **kw):
        """Launches a task and waits until it runs; its status."""
        self.sched.launch(agent_id, task_id, command, timeout=60, **kw)
        st = self.sched.wait_state(task_id, ("TASK_RUNNING",) + TERMINAL, 90)
        if st["state"] != "TASK_RUNNING":
            raise RuntimeError(f"task {task_id}: {st['state']}: {st.get('message')}")
        return st

    def crash_report(self, daemon):
        """The last lines of a daemon's own output (an abort's reason is there)."""
        try:
            text = read(os.path.join(self.tmp, f"{daemon.name}.out"))
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-4:])

    # -- (r) bytes that are not UTF-8 wherever a task sets a string --------------------

    def run_non_utf8(self, tn, tn_id, user, logger):
        r = self.results
        pid = tn.proc.pid
        canary = "canary-" + uuid.uuid4().hex[:6]
        self.start_task(tn_id, canary, "exec sleep 600", user=user, labels={"team": "t"})
        bad = self.BAD
        # (what, launch arguments, words a refusal must name)
        cases = [
            ("label x", {"labels": [("x", bad)]}, ["x"]),
            ("label rein.net.egress.rate",
             {"labels": [("rein.net.egress.rate", bad)]}, ["rein.net.egress.rate"]),
            ("label rein.blkio.weight", {"labels": [("rein.blkio.weight", bad)]},
             ["rein.blkio.weight"]),
            ("label rein.disk.mode", {"labels": [("rein.disk.mode", bad)]},
             ["rein.disk.mode"]),
            ("label key", {"labels": [(raw(b"rein.\xff\xfe"), "1")]}, ["label"]),
            ("task name", {"name": raw(b"name-\xff\xfe")}, ["name"]),
            ("REIN_ variable", {"env": {"REIN_X": bad}}, ["REIN_X"]),
        ]
        if logger:
            cases.insert(2, ("label rein.log.sink", {"labels": [("rein.log.sink", bad)]},
                             ["rein.log.sink"]))
        outcomes, ok = [], True
        for what, kw, words in cases:
            tid = "utf8-" + uuid.uuid4().hex[:6]
            try:
                self.sched.launch(tn_id, tid, "exec sleep 600", user=user, timeout=60, **kw)
                st = self.sched.wait_state(tid, ("TASK_RUNNING",) + TERMINAL, 90)
                state, message = st["state"], st.get("message", "")
            except TimeoutError as e:
                state, message = "no status", str(e)
            alive = tn.alive() and tn.proc.pid == pid
            if state == "TASK_RUNNING":
                good = True
                self.sched.kill(tid, tn_id)
                self.sched.wait_state(tid, TERMINAL, 60)
            else:
                # Refused: the message names the field (and the task alone failed).
                good = state in ("TASK_FAILED", "TASK_ERROR") and all(
                    w.lower() in message.lower() for w in words)
            ok = ok and good and alive
            outcomes.append(f"{what}: {state} {message!r}"
                            + ("" if good else f" (expected running, or a refusal naming "
                               f"{words})") + ("" if alive else "; AGENT DIED"))
            log(f"(r) {outcomes[-1]}")
            if not alive:
                outcomes.append(f"agent output: {self.crash_report(tn)}")
                break
        after, after_state = "after-" + uuid.uuid4().hex[:6], "not launched"
        if tn.alive():
            try:
                after_state = self.start_task(tn_id, after, "exec sleep 600", user=user,
                                              labels={"team": "t"})["state"]
                self.sched.kill(after, tn_id)
            except (RuntimeError, TimeoutError) as e:
                after_state = str(e)
        canary_state = self.sched.states(canary)[-1]
        alive = tn.alive() and tn.proc.pid == pid
        r.record("r", ok and alive and after_state == "TASK_RUNNING"
                 and canary_state == "TASK_RUNNING",
                 f"agent pid {pid} alive throughout {alive}; a task launched after them "
                 f"{after_state}; the canary task still {canary_state}; "
                 + "; ".join(outcomes))
        if tn.alive():
            self.sched.kill(canary, tn_id)

    # -- (s) symlinks and FIFOs in the sandbox against the shipper ---------------------

    @staticmethod
    def snapshot(top):
        """Every object under top: type, mode, owner, size, mtime and content."""
        seen = {}
        for dirpath, dirs, files in os.walk(top):
            for name in dirs + files:
                path = os.path.join(dirpath, name)
                st = os.lstat(path)
                content = None
                if os.path.isfile(path) and not os.path.islink(path):
                    with open(path, "rb") as f:
                        content = f.read()
                seen[os.path.relpath(path, top)] = (
                    st.st_mode, st.st_uid, st.st_size, st.st_mtime_ns, content)
        return seen

    @staticmethod
    def numbered_lines(sandbox, stream, prefix):
        """Numbers of `prefix<n>` lines in a stream's regular files, oldest first."""
        names = [n for n in os.listdir(sandbox) if re.fullmatch(stream + r"(\.\d+)?", n)]
        names.sort(key=lambda n: -int(n.rpartition(".")[2]) if "." in n else 0)
        out = []
        for name in names:
            path = os.path.join(sandbox, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            with open(path, "rb") as f:
                # Complete lines only: the shipper may be writing the last one.
                out += [int(m) for m in re.findall(
                    rb"^" + re.escape(prefix.encode()) + rb"(\d+)\n", f.read(), re.M)]
        return out

    @staticmethod
    def sandbox_kinds(sandbox):
        kinds = {}
        for name in sorted(os.listdir(sandbox)):
            st = os.lstat(os.path.join(sandbox, name))
            kind = ("symlink" if os.path.islink(os.path.join(sandbox, name)) else
                    "fifo" if (st.st_mode & 0o170000) == 0o010000 else
                    "dir" if os.path.isdir(os.path.join(sandbox, name)) else "file")
            kinds[name] = f"{kind} uid {st.st_uid}"
        return kinds

    def shipper_worker(self, sup):
        try:
            pid = int(read(os.path.join(sup.state, "worker.pid")).strip())
        except (OSError, ValueError):
            return None
        return pid if os.path.exists(f"/proc/{pid}") else None

    def shipper_counters(self, sup):
        try:
            return json.loads(read(os.path.join(sup.state, "counters.json")))
        except (OSError, ValueError):
            return {}

    def run_symlink_attack(self, tn, tn_id, user, sup):
        r = self.results
        # Root's objects outside every sandbox: a file anyone may read, a root-only
        # directory with a 0600 file, and two names that must never come to exist.
        outside = os.path.join(self.tmp, "outside")
        private = os.path.join(outside, "private")
        os.makedirs(private)
        os.chmod(outside, 0o755)
        os.chmod(private, 0o700)
        target, secret = os.path.join(outside, "root-file"), os.path.join(private, "secret")
        for path, mode in ((target, 0o644), (secret, 0o600)):
            with open(path, "w") as f:
                f.write("root's own content\n" * 4)
            os.chmod(path, mode)
        before = self.snapshot(outside)
        new1, new2 = os.path.join(outside, "new-file"), os.path.join(private, "new-file")

        victim = "victim-" + uuid.uuid4().hex[:6]
        self.start_task(tn_id, victim, "i=0; while :; do echo victim-$i; i=$((i+1)); "
                        "sleep 0.05; done", user=user)
        _, vbox = wait_for("the victim's container", lambda: self.container_of(tn, victim), 20)

        def victim_lines():
            return self.numbered_lines(vbox, "stdout", "victim-")

        def victim_progress(what, n=40):
            """Waits for n more victim lines; how many there were, or why not."""
            start = len(victim_lines())
            try:
                wait_for(f"{n} more victim lines {what}",
                         lambda: len(victim_lines()) >= start + n, 60, 0.2)
                return f"{what}: +{len(victim_lines()) - start} lines"
            except TimeoutError:
                return f"{what}: STALLED at {len(victim_lines())} lines"

        # The attacker writes as fast as a shell does while, in a tight loop, every
        # name the shipper writes, rotates to or reads is replaced by a symlink to
        # root's files or to new names in root's directories, a FIFO or a directory.
        attack = (
            f"T1={target}; T2={secret}; N1={new1}; N2={new2}; "
            "( i=0; while :; do j=0; while [ $j -lt 50 ]; do "
            "echo attack-$i-$j-" + "x" * 80 + "; echo attack-err-$i-$j >&2; "
            "j=$((j+1)); done; i=$((i+1)); sleep 0.01; done ) & "
            "while :; do ln -sfn $T1 stdout; ln -sfn $N1 stderr; ln -sfn $T2 stdout.1; "
            "ln -sfn $N2 stderr.1; rm -rf stdout.2 stderr.2; mkfifo stdout.2 stderr.2; "
            "ln -sfn $N1 stdout.3; ln -sfn $T2 stdout.4; mkdir -p stderr.3; "
            "done 2>/dev/null")
        attacker = "attacker-" + uuid.uuid4().hex[:6]
        self.start_task(tn_id, attacker, attack, user=user)
        _, abox = wait_for("the attacker's container",
                           lambda: self.container_of(tn, attacker), 20)
        wait_for("the attacker's first symlink",
                 lambda: os.path.islink(os.path.join(abox, "stdout")), 30)
        steps = []

        def rotations():
            return self.shipper_counters(sup).get("reader", {}).get("rotations", 0)

        def attack_for(what, n):
            """Keeps the attack on for n more rotations (at most 20 s of it)."""
            start = rotations()
            try:
                wait_for(f"{n} rotations {what}", lambda: rotations() >= start + n, 20, 0.2)
            except TimeoutError:
                pass
            steps.append(f"{what}: {rotations() - start} rotations")

        attack_for("while writing", 20)
        # Moment: the worker restarts (kill -9) and adopts the pipes with the
        # sandbox names planted.
        worker = self.shipper_worker(sup)
        if worker:
            os.kill(worker, signal.SIGKILL)
            wait_for("a new shipper worker",
                     lambda: self.shipper_worker(sup) not in (None, worker), 60, 0.2)
        steps.append(victim_progress(f"after the worker kill -9 (pid {worker})"))
        attack_for("after the worker restart", 10)
        # Moment: the agent is killed and restarted.
        self.restart_agent(tn, tn_id)
        steps.append(victim_progress("after the agent restart"))
        attack_for("after the agent restart", 10)
        # Moment: the worker is upgraded in place (SIGHUP to the supervisor).
        worker = self.shipper_worker(sup)
        if sup.alive():
            os.kill(sup.proc.pid, signal.SIGHUP)
            try:
                wait_for("the upgraded worker",
                         lambda: self.shipper_worker(sup) not in (None, worker), 60, 0.2)
            except TimeoutError:
                steps.append("SIGHUP: no new worker")
        steps.append(victim_progress("after the worker upgrade (SIGHUP)"))
        attack_for("after the upgrade", 10)
        kinds = self.sandbox_kinds(abox)
        self.sched.kill(attacker, tn_id)
        self.sched.wait_state(attacker, TERMINAL, 60)
        steps.append(victim_progress("after the attacker ended", 20))

        after = self.snapshot(outside)
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        lines = victim_lines()
        contiguous = lines == list(range(len(lines)))
        counters = self.shipper_counters(sup)
        reader = counters.get("reader", counters)
        victim_state = self.sched.states(victim)[-1]
        stalled = [s for s in steps if "STALLED" in s]
        alive = tn.alive() and sup.alive() and self.shipper_worker(sup) is not None
        detail = (f"objects outside the sandbox changed or created: {changed or 'none'}; "
                  f"agent alive {tn.alive()}, shipper supervisor alive {sup.alive()}, "
                  f"worker {self.shipper_worker(sup)}; victim {len(lines)} lines, "
                  f"contiguous and in order {contiguous}, still {victim_state}; "
                  f"{'; '.join(steps)}; attacker's sandbox at the end {kinds}; "
                  f"shipper counters {json.dumps(reader, sort_keys=True)}")
        if changed:
            detail += "; " + "; ".join(
                f"{k}: {before.get(k) and before[k][:3]} -> {after.get(k) and after[k][:3]}"
                f" content {(after.get(k) or (0,) * 5)[4]!r:.120}" for k in changed[:4])
        r.record("s", not changed and alive and contiguous and not stalled
                 and victim_state == "TASK_RUNNING", detail)
        self.sched.kill(victim, tn_id)
        self.sched.wait_state(victim, TERMINAL, 60)


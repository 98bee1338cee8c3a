# Part of the agent suite (tests/agent/run); see its docstring for the checks.
"""The suite's fixture: temp dir, module build, master, agents, cleanup."""

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

from .common import (
    CHECKS, CHECK_NAMES, Daemon, REPO, cgroup_mode, cgroup_v1_mounts, free_port, http_json,
    http_ok, kill_and_remove_cgroups, log, mount_points, prepare_v2_root, read, wait_for)


from .scheduler import Scheduler


class SuiteBase:
    def __init__(self, results):
        self.results = results
        self.mode = cgroup_mode()
        self.mesos = os.environ["MESOS_HOME"]
        self.tmp = tempfile.mkdtemp(prefix="rein-agent-")
        tag = f"{os.getpid()}_{random.randrange(1 << 30):x}"
        self.root_rein = f"rein_suite_{tag}"
        self.root_base = f"rein_suite_base_{tag}"
        self.root_io = f"rein_suite_io_{tag}"
        self.root_eg = f"rein_suite_eg_{tag}"
        self.root_log = f"rein_suite_log_{tag}"
        self.root_tn = f"rein_suite_tenant_{tag}"
        self.primary_tn = 0xbc00 + random.randrange(0xff)
        self.netns = self.veth = self.receiver = None
        self.primary = 0xbe00 + random.randrange(0xff)
        self.primary_eg = 0xbd00 + random.randrange(0xff)
        self.mounts_before = set(mount_points())
        self.daemons = []
        self.sched = None
        self._baseline = None
        self.master_port = None
        self.env = dict(os.environ)
        lib = os.path.join(self.mesos, "lib")
        self.env["LD_LIBRARY_PATH"] = lib + (
            ":" + self.env["LD_LIBRARY_PATH"] if self.env.get("LD_LIBRARY_PATH") else "")
        self.module_lib = os.path.join(self.tmp, "librein_modules.so")
        only = os.environ.get("REIN_AGENT_ONLY", "").replace(",", "").strip()
        self.only = set(only) & set(CHECKS) if only else set(CHECKS)

    def sbin(self, name):
        for d in ("sbin", "bin"):
            p = os.path.join(self.mesos, d, name)
            if os.path.exists(p):
                return p
        raise FileNotFoundError(f"{name} not found under {self.mesos}/sbin or /bin")

    def build_module(self):
        prebuilt = os.environ.get("REIN_AGENT_MODULE_LIB")
        if prebuilt:
            # Built elsewhere against the same Mesos (the Docker and VM lanes build it
            # on the host, where the compiler and the Mesos headers are).
            shutil.copyfile(prebuilt, self.module_lib)
            log(f"module library {prebuilt} (REIN_AGENT_MODULE_LIB)")
            return
        env = dict(os.environ, REIN_MODULE_LIB=self.module_lib)
        proc = subprocess.run([os.path.join(REPO, "modules", "build.sh")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        sys.stdout.write("".join(l + "\n" for l in proc.stdout.splitlines()
                                 if l.startswith(("modules/build.sh", "SKIPPED", "error"))))
        if proc.returncode != 0 or not os.path.exists(self.module_lib):
            print(proc.stdout[-4000:])
            raise RuntimeError("modules/build.sh failed")

    def write_manifest(self, filename="modules.json", modules=None):
        """A module manifest; modules: module name -> parameters (default: net_cls)."""
        if modules is None:
            modules = {"rein_NetClsIsolator": {
                "state_dir": os.path.join(self.tmp, "rein-state"),
                "cgroups_root": self.root_rein,
                "net_cls_primary_handle": hex(self.primary),
                "net_cls_secondary_handles": "[0x1-0xfff]",
                "mount_net_cls": "true",
                "allow_debug_panic": "true",
            }}
        manifest = {"libraries": [{"file": self.module_lib, "modules": [{
            "name": name,
            "parameters": [{"key": k, "value": v} for k, v in params.items()]}
            for name, params in modules.items()]}]}
        path = os.path.join(self.tmp, filename)
        with open(path, "w") as f:
            json.dump(manifest, f, indent=1)
        return path

    def agent(self, name, port, isolation, cgroups_root, modules=None, extra=(),
              switch_user=False):
        d = os.path.join(self.tmp, name)
        if self.mode == "v2":
            prepare_v2_root(cgroups_root)
        for sub in ("work", "run", "logs", "fetcher"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        argv = [
            self.sbin("mesos-agent"), f"--master=127.0.0.1:{self.master_port}",
            "--ip=127.0.0.1", "--hostname=127.0.0.1", f"--port={port}",
            f"--work_dir={d}/work", f"--runtime_dir={d}/run", f"--log_dir={d}/logs",
            f"--fetcher_cache_dir={d}/fetcher",
            f"--launcher_dir={os.path.join(self.mesos, 'libexec', 'mesos')}",
            "--systemd_enable_support=false", "--launcher=linux",
            f"--isolation={isolation}", f"--cgroups_root={cgroups_root}",
            "--resources=cpus:4;mem:4096;disk:4096;ports:[31000-31100]",
            f"--switch_user={'true' if switch_user else 'false'}",
            "--executor_registration_timeout=2mins",
            "--registration_backoff_factor=100ms",
        ]
        if modules:
            argv.append(f"--modules=file://{modules}")
        argv.extend(extra)
        daemon = Daemon(name, argv, self.tmp, self.env)
        daemon.port, daemon.dir = port, d
        self.daemons.append(daemon)
        return daemon

    def agent_id(self, daemon):
        return wait_for(f"{daemon.name} to register",
                        lambda: http_json(daemon.port, "/state").get("id"), 60, 0.5)

    def restart_agent(self, daemon, agent_id, note=""):
        """SIGKILL of an agent alone (its executors survive), its offers
        dropped, started again; returns once the master has it active."""
        daemon.sigkill()
        log(f"{daemon.name} killed with SIGKILL{note}")
        time.sleep(1)
        self.sched.drop_offers(agent_id)
        daemon.start()
        wait_for(f"{daemon.name} to re-register", lambda: any(
            a["id"] == agent_id and a.get("active")
            for a in http_json(self.master_port, "/slaves")["slaves"]), 90, 0.5)

    def agent_log(self, daemon):
        logs = os.path.join(daemon.dir, "logs")
        text = ""
        for name in sorted(os.listdir(logs)):
            if ".INFO." in name:
                text += read(os.path.join(logs, name))
        return text

    def container_of(self, daemon, task_id):
        """(container id, sandbox) of a task's executor from the agent's /state."""
        state = http_json(daemon.port, "/state")
        for fw in state.get("frameworks", []):
            for ex in fw.get("executors", []):
                for t in ex.get("tasks", []):
                    if t["id"] == task_id:
                        return ex["container"], ex["directory"]
        return None

    def net_cls_dir(self, container=None):
        base = os.path.join(cgroup_v1_mounts()["net_cls"], self.root_rein)
        return os.path.join(base, container) if container else base

    # -- the steps ------------------------------------------------------------------

    def wants(self, checks):
        return any(c in self.only for c in checks)

    def skip(self, check, why):
        if check in self.results.outcomes or check not in CHECKS:
            return
        self.results.outcomes[check] = ("skip", why)
        print(f"SKIP ({check}) {CHECK_NAMES[check]}: {why}", flush=True)

    def baseline(self):
        """The agent without any rein module, started on first use: (daemon, agent id)."""
        if self._baseline is None:
            base = self.agent("agent-base", free_port(), "filesystem/posix,cgroups/cpu",
                              self.root_base)
            base.start()
            self._baseline = (base, self.agent_id(base))
            log(f"baseline agent registered: {self._baseline[1]}")
        return self._baseline

    def start_master(self):
        self.master_port = free_port()
        master = Daemon("master", [
            self.sbin("mesos-master"), "--ip=127.0.0.1", "--hostname=127.0.0.1",
            f"--port={self.master_port}", f"--work_dir={self.tmp}/master",
            f"--log_dir={self.tmp}/master-logs", "--registry=in_memory",
            "--allocation_interval=50ms", "--quiet"], self.tmp, self.env)
        self.daemons.append(master)
        master.start()
        wait_for("the master", lambda: http_ok(self.master_port, "/health"), 30, 0.3)
        # Healthy is not leading: under emulation the master takes up to ~20 s to
        # elect itself and recover (SUBSCRIBE answers 503 until then).
        wait_for("the master to lead", lambda: http_json(
            self.master_port, "/state").get("elected_time"), 90, 0.5)
        self.sched = Scheduler(self.master_port)
        self.sched.subscribe()
        log(f"framework {self.sched.framework_id}")

    def run(self, phases):
        """Runs each selected phase; one phase's exception fails only that phase's
        unrecorded checks, and the next phase runs."""
        log(f"temp dir {self.tmp}; cgroups roots {self.root_rein}, {self.root_base}; "
            f"primary handle {hex(self.primary)}")
        for c in CHECKS:
            if c not in self.only:
                self.skip(c, f"not selected (REIN_AGENT_ONLY={os.environ['REIN_AGENT_ONLY']})")
        self.build_module()
        self.start_master()
        for phase in phases:
            if not self.wants(phase.checks + phase.also_for):
                continue
            log(f"phase {phase.name}: checks {', '.join(phase.checks)}")
            try:
                getattr(self, phase.method)()
            except Exception as e:  # noqa: BLE001 - reported; the other phases go on
                traceback.print_exc()
                for c in phase.checks:
                    if c in self.only and c not in self.results.outcomes:
                        self.results.record(
                            c, False, f"phase {phase.name} failed: {type(e).__name__}: {e}")

        errors = []
        while not self.sched.errors.empty():
            errors.append(str(self.sched.errors.get()))
        if errors:
            log("scheduler stream errors: " + "; ".join(errors))

    def dump_warnings(self, limit=200):
        """Every daemon's warnings and errors (glog W/E lines and rein's WARN/ERROR),
        for lanes whose temp dir vanishes with the machine (the VM, Docker)."""
        for name in sorted(os.listdir(self.tmp)):
            path = os.path.join(self.tmp, name)
            if not (name.endswith(".out") and os.path.isfile(path)):
                continue
            with open(path, errors="replace") as f:
                lines = [l.rstrip() for l in f if l[:1] in ("W", "E") and l[1:5].isdigit()
                         or " WARN " in l or " ERROR " in l]
            if lines:
                print(f"---- {name}: {len(lines)} warnings/errors (last {limit})")
                print("\n".join(lines[-limit:]), flush=True)

    def cleanup(self):
        if (os.environ.get("REIN_AGENT_DUMP_LOGS") == "1"
                and any(kind == "fail" for kind, _ in self.results.outcomes.values())):
            self.dump_warnings()
        if self.sched and self.sched.framework_id:
            try:
                self.sched.teardown()
                time.sleep(3)
            except Exception as e:  # noqa: BLE001
                log(f"teardown: {e}")
        for daemon in reversed(self.daemons):
            daemon.stop()
        for root in (self.root_rein, self.root_base, self.root_io, self.root_eg,
                     self.root_log, self.root_tn):
            kill_and_remove_cgroups(root)
        self.remove_netns()
        for point in sorted(set(mount_points()) - self.mounts_before, key=len, reverse=True):
            log(f"unmounting {point} (made during the run)")
            subprocess.run(["umount", "-l", point], check=False)
        if os.environ.get("REIN_AGENT_KEEP") == "1":
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)



# Part of the agent suite (tests/agent/run); see its docstring for the checks.
"""Checks (l)-(m): egress shaping on a veth to a network namespace."""

import json
import os
import random
import re
import signal
import subprocess
import uuid

from .common import free_port, log, read, wait_for
from .scheduler import TERMINAL


class EgressPhase:
    def make_netns(self):
        tag = os.getpid() % 100000
        self.netns = f"rein-suite-{os.getpid()}"
        self.veth, peer = f"rsv{tag}", f"rsp{tag}"
        net = random.randrange(1, 250)
        self.host_ip, self.ns_ip = f"10.252.{net}.1", f"10.252.{net}.2"
        for argv in (["ip", "netns", "add", self.netns],
                     ["ip", "link", "add", self.veth, "type", "veth", "peer", "name", peer],
                     ["ip", "link", "set", peer, "netns", self.netns],
                     ["ip", "addr", "add", f"{self.host_ip}/30", "dev", self.veth],
                     ["ip", "link", "set", self.veth, "up"],
                     ["ip", "-n", self.netns, "addr", "add", f"{self.ns_ip}/30", "dev", peer],
                     ["ip", "-n", self.netns, "link", "set", peer, "up"],
                     ["ip", "-n", self.netns, "link", "set", "lo", "up"]):
            subprocess.run(argv, check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    RECEIVER = r"""
import json, socket, sys, time
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(4)
while True:
    conn, _ = srv.accept()
    n, first, last = 0, None, None
    while True:
        data = conn.recv(1 << 16)
        if not data:
            break
        now = time.time()
        first = first or now
        last = now
        n += len(data)
    conn.close()
    print(json.dumps({"bytes": n, "seconds": (last or 0) - (first or 0)}), flush=True)
"""

    SENDER = r"""
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
s.connect((sys.argv[1], int(sys.argv[2])))
buf, n, t0 = b"x" * 65536, 0, time.time()
while time.time() - t0 < 3:
    n += s.send(buf)
s.shutdown(socket.SHUT_WR)
s.recv(1)  # the receiver closes once it has read everything: all of n is delivered
t = time.time() - t0
print(f"egress sent {n} bytes in {t:.3f} s = {n * 8 / t / 1e6:.3f} Mbit/s", flush=True)
"""

    def classes(self):
        """(class id, line) of every HTB class on the veth."""
        out = subprocess.run(["tc", "class", "show", "dev", self.veth], check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        found = []
        for line in out.splitlines():
            words = line.split()
            if len(words) > 2 and ":" in words[2]:
                major, minor = (int(x or "0", 16) for x in words[2].split(":"))
                found.append((major << 16 | minor, line))
        return found

    def tc_class(self, classid):
        return [line for cid, line in self.classes() if cid == classid]

    def our_class(self):
        """The one class id on the veth under our primary handle, minor 0x10-0xfff."""
        found = [cid for cid, _ in self.classes()
                 if cid >> 16 == self.primary_eg and 0x10 <= cid & 0xffff <= 0xfff]
        return found[0] if len(found) == 1 else None

    def run_egress(self):
        r = self.results
        self.make_netns()
        port = 5001
        with open(os.path.join(self.tmp, "receiver.py"), "w") as f:
            f.write(self.RECEIVER)
        sender = os.path.join(self.tmp, "sender.py")
        with open(sender, "w") as f:
            f.write(self.SENDER)
        out = open(os.path.join(self.tmp, "receiver.out"), "ab")
        self.receiver = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{self.netns}", "python3",
             os.path.join(self.tmp, "receiver.py"), self.ns_ip, str(port)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        params = {
            "state_dir": os.path.join(self.tmp, "rein-state-egress"),
            "cgroups_root": self.root_eg,
            "net_cls_primary_handle": hex(self.primary_eg),
            "net_cls_secondary_handles": "[0x10-0xfff]",
            "mount_net_cls": "true",
            "egress_shaping": "true",
            "egress_devices": self.veth,
        }
        if self.mode == "v2":
            # No net_cls: classified by the container's cgroup v2 id (a BPF filter).
            params.update(mount_net_cls="false", egress_classifier="cgroup2")
        manifest = self.write_manifest("modules-egress.json", {"rein_NetClsIsolator": params})
        eg = self.agent("agent-egress", free_port(),
                        "filesystem/posix,cgroups/cpu,rein_NetClsIsolator", self.root_eg,
                        manifest)
        eg.start()
        eg_id = self.agent_id(eg)
        log(f"agent-egress registered: {eg_id}; {self.veth} {self.host_ip} -> "
            f"{self.ns_ip} in netns {self.netns}")

        task = "egress-" + uuid.uuid4().hex[:6]
        self.sched.launch(eg_id, task, f"python3 {sender} {self.ns_ip} {port}; sleep 600",
                          {"rein.net.egress.rate": "10mbit"})
        st = self.sched.wait_state(task, ("TASK_RUNNING",) + TERMINAL, 90)
        if st["state"] != "TASK_RUNNING":
            raise RuntimeError(f"egress task: {st['state']}: {st.get('message')}")
        classid = (st.get("container_status", {}).get("cgroup_info", {})
                   .get("net_cls", {}).get("classid"))
        if classid is None and self.mode == "v2":
            # No classid in the status on v2: the container's class is the one
            # under our primary handle in the secondary range.
            classid = wait_for("the container's HTB class", lambda: self.our_class(), 20)
        _, sandbox = wait_for("the egress task's container",
                              lambda: self.container_of(eg, task), 20)
        out = wait_for("the sender's report", lambda: "Mbit/s" in read(
            os.path.join(sandbox, "stdout")) and read(os.path.join(sandbox, "stdout")), 30)
        m = re.search(r"= ([\d.]+) Mbit/s", out)
        sent = float(m.group(1)) if m else None
        recv_lines = wait_for("the receiver's report", lambda: read(
            os.path.join(self.tmp, "receiver.out")).strip(), 10).splitlines()
        got = json.loads(recv_lines[-1])
        received = got["bytes"] * 8 / got["seconds"] / 1e6 if got["seconds"] else 0
        r.record("l", sent is not None and 9.0 <= sent <= 11.0 and 9.0 <= received <= 11.0,
                 f"sender {out.strip()!r}; receiver {got['bytes']} bytes in "
                 f"{got['seconds']:.3f} s = {received:.3f} Mbit/s (accepted 9-11)")

        # (m) The class outlives an agent SIGKILL + restart, and goes with the task.
        before = self.tc_class(classid) if classid else []
        self.restart_agent(eg, eg_id)
        wait_for("agent-egress to recover the task",
                 lambda: self.container_of(eg, task), 60, 0.5)
        after = self.tc_class(classid) if classid else []
        running = self.sched.states(task)[-1] == "TASK_RUNNING"
        self.sched.kill(task, eg_id)
        self.sched.wait_state(task, TERMINAL, 60)
        try:
            wait_for("the class to go", lambda: not self.tc_class(classid), 30, 0.5)
        except TimeoutError:
            pass
        gone = not self.tc_class(classid) if classid else False
        r.record("m", bool(before) and bool(after) and running and gone,
                 f"classid {classid and hex(classid)}; before restart {before}; "
                 f"after restart {after}; task running after restart {running}; "
                 f"class removed after the task ended {gone}")

    # -- the container logger through the shipper -----------------------------------

    def remove_netns(self):
        if getattr(self, "receiver", None) and self.receiver.poll() is None:
            os.killpg(self.receiver.pid, signal.SIGKILL)
            self.receiver.wait(5)
        if getattr(self, "netns", None):
            subprocess.run(["ip", "netns", "del", self.netns], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            subprocess.run(["ip", "link", "del", self.veth], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# Part of the agent suite (tests/agent/run); see its docstring for the checks.
"""A minimal v1 scheduler: one subscription stream, offers kept per agent."""

import http.client
import json
import queue
import threading
import time
import uuid

from .common import loads_bytes, log, wait_for, wire


class Scheduler:
    def __init__(self, master_port):
        self.port = master_port
        self.framework_id = None
        self.stream_id = None
        self.offers = {}  # agent id -> list of offers
        self.statuses = {}  # task id -> list of statuses
        self.lock = threading.Condition()
        self.errors = queue.Queue()
        self.conn = None
        self.thread = None

    def subscribe(self):
        body = json.dumps({
            "type": "SUBSCRIBE",
            "subscribe": {"framework_info": {
                "user": "root", "name": "rein-agent-suite", "checkpoint": True,
                "failover_timeout": 600,
            }},
        })
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=None)
        self.conn.request("POST", "/api/v1/scheduler", body, {
            "Content-Type": "application/json", "Accept": "application/json",
            "Connection": "close"})
        resp = self.conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"SUBSCRIBE -> {resp.status}: {resp.read()[:300]!r}")
        self.stream_id = resp.getheader("Mesos-Stream-Id")
        self.thread = threading.Thread(target=self._read, args=(resp,), daemon=True)
        self.thread.start()
        wait_for("SUBSCRIBED", lambda: self.framework_id, 30)

    def _read(self, resp):
        try:
            while True:
                length = b""
                while True:
                    c = resp.read(1)
                    if not c:
                        return
                    if c == b"\n":
                        break
                    length += c
                event = loads_bytes(resp.read(int(length)))
                self._handle(event)
        except Exception as e:  # noqa: BLE001 - reported by the suite
            self.errors.put(e)

    def _handle(self, event):
        kind = event.get("type")
        with self.lock:
            if kind == "SUBSCRIBED":
                self.framework_id = event["subscribed"]["framework_id"]["value"]
            elif kind == "OFFERS":
                for offer in event["offers"]["offers"]:
                    self.offers.setdefault(offer["agent_id"]["value"], []).append(offer)
            elif kind == "RESCIND":
                oid = event["rescind"]["offer_id"]["value"]
                for offers in self.offers.values():
                    offers[:] = [o for o in offers if o["id"]["value"] != oid]
            elif kind == "UPDATE":
                status = event["update"]["status"]
                status["_received"] = time.time()
                self.statuses.setdefault(status["task_id"]["value"], []).append(status)
                if "uuid" in status:
                    threading.Thread(target=self._acknowledge, args=(status,),
                                     daemon=True).start()
            elif kind == "ERROR":
                self.errors.put(RuntimeError(f"scheduler error: {event}"))
            self.lock.notify_all()

    def call(self, body):
        body["framework_id"] = {"value": self.framework_id}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", "/api/v1/scheduler", wire(body), {
                "Content-Type": "application/json", "Mesos-Stream-Id": self.stream_id})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status not in (200, 202):
                raise RuntimeError(f"{body['type']} -> {resp.status}: {data[:300]!r}")
        finally:
            conn.close()

    def _acknowledge(self, status):
        try:
            self.call({"type": "ACKNOWLEDGE", "acknowledge": {
                "agent_id": status["agent_id"], "task_id": status["task_id"],
                "uuid": status["uuid"]}})
        except Exception as e:  # noqa: BLE001
            self.errors.put(e)

    def take_offer(self, agent_id, timeout=30, needs=None):
        """The first offer of an agent holding at least `needs` (name -> scalar)."""
        def covers(offer):
            have = {}
            for res in offer.get("resources", []):
                if res.get("type") == "SCALAR":
                    have[res["name"]] = have.get(res["name"], 0) + res["scalar"]["value"]
            return all(have.get(k, 0) >= v for k, v in (needs or {}).items())

        def pick():
            with self.lock:
                offers = self.offers.get(agent_id) or []
                for i, offer in enumerate(offers):
                    if covers(offer):
                        return offers.pop(i)
                return None
        return wait_for(f"an offer from agent {agent_id}", pick, timeout, 0.02)

    def launch(self, agent_id, task_id, command, labels=None, timeout=30, disk=None,
               user=None, name=None, env=None):
        """Launches one task on the agent; returns the time the ACCEPT was sent.

        labels: a dict or (key, value) pairs; user: the task's user (the agent's
        --switch_user); name: the task name (default the id); env: variables."""
        needs = {"cpus": 0.1, "mem": 32}
        if disk is not None:
            needs["disk"] = disk
        offer = self.take_offer(agent_id, timeout, needs)
        resources = [
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}},
        ]
        if disk is not None:
            resources.append({"name": "disk", "type": "SCALAR", "scalar": {"value": disk}})
        task = {
            "name": task_id if name is None else name, "task_id": {"value": task_id},
            "agent_id": {"value": agent_id},
            "resources": resources,
            "command": {"value": command, "shell": True},
        }
        if user:
            task["command"]["user"] = user
        if env:
            task["command"]["environment"] = {"variables": [
                {"name": k, "value": v} for k, v in env.items()]}
        if labels:
            pairs = labels.items() if isinstance(labels, dict) else labels
            task["labels"] = {"labels": [{"key": k, "value": v} for k, v in pairs]}
        sent = time.time()
        self.call({"type": "ACCEPT", "accept": {
            "offer_ids": [offer["id"]],
            "operations": [{"type": "LAUNCH", "launch": {"task_infos": [task]}}],
            "filters": {"refuse_seconds": 0.0}}})
        return sent

    def launch_group(self, agent_id, task_id, command, labels=None, disk=None, timeout=30):
        """One task in a task group: Mesos's default executor runs it as a nested
        container (the executor id is the task id with "-executor")."""
        # The master refuses a default executor without disk of its own.
        needs = {"cpus": 0.2, "mem": 64, "disk": 10 + (disk or 0)}
        offer = self.take_offer(agent_id, timeout, needs)

        def scalars(cpus, mem, disk_mb=None):
            out = [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
                   {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}}]
            if disk_mb:
                out.append({"name": "disk", "type": "SCALAR", "scalar": {"value": disk_mb}})
            return out
        executor = {
            "type": "DEFAULT", "executor_id": {"value": f"{task_id}-executor"},
            "framework_id": {"value": self.framework_id},
            "resources": scalars(0.1, 32, 10),
        }
        task = {
            "name": task_id, "task_id": {"value": task_id}, "agent_id": {"value": agent_id},
            "resources": scalars(0.1, 32, disk),
            "command": {"value": command, "shell": True},
        }
        if labels:
            task["labels"] = {"labels": [{"key": k, "value": v} for k, v in labels.items()]}
        sent = time.time()
        self.call({"type": "ACCEPT", "accept": {
            "offer_ids": [offer["id"]],
            "operations": [{"type": "LAUNCH_GROUP", "launch_group": {
                "executor": executor, "task_group": {"tasks": [task]}}}],
            "filters": {"refuse_seconds": 0.0}}})
        return sent

    def launch_burst(self, agent_id, prefix, n, command, timeout=60, labels=None):
        """n tasks in one ACCEPT of all the agent's offers; (time sent, task ids)."""
        cpus, mem = 0.05, 32

        def covered():
            have = {}
            for offer in self.offers.get(agent_id) or []:
                for res in offer.get("resources", []):
                    if res.get("type") == "SCALAR":
                        have[res["name"]] = have.get(res["name"], 0) + res["scalar"]["value"]
            return have.get("cpus", 0) >= cpus * n - 1e-9 and have.get("mem", 0) >= mem * n

        def pick():
            # The agent's free resources may come in several offers: take them all.
            with self.lock:
                return covered() and self.offers.pop(agent_id)
        offers = wait_for(f"offers from agent {agent_id} for {n} tasks", pick, timeout, 0.02)
        ids = [f"{prefix}-{i}-{uuid.uuid4().hex[:4]}" for i in range(n)]
        tasks = [{
            "name": tid, "task_id": {"value": tid}, "agent_id": {"value": agent_id},
            "resources": [
                {"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
                {"name": "mem", "type": "SCALAR", "scalar": {"value": mem}}],
            "command": {"value": command, "shell": True},
        } for tid in ids]
        if labels:
            for t in tasks:
                t["labels"] = {"labels": [{"key": k, "value": v} for k, v in labels.items()]}
        sent = time.time()
        self.call({"type": "ACCEPT", "accept": {
            "offer_ids": [o["id"] for o in offers],
            "operations": [{"type": "LAUNCH", "launch": {"task_infos": tasks}}],
            "filters": {"refuse_seconds": 0.0}}})
        return sent, ids

    def drop_offers(self, agent_id):
        """Declines the offers held for an agent (e.g. one that just went away)."""
        with self.lock:
            offers = self.offers.pop(agent_id, [])
        if offers:
            try:
                self.call({"type": "DECLINE", "decline": {
                    "offer_ids": [o["id"] for o in offers],
                    "filters": {"refuse_seconds": 0.0}}})
            except RuntimeError as e:
                log(f"declining stale offers: {e}")

    def kill(self, task_id, agent_id):
        self.call({"type": "KILL", "kill": {"task_id": {"value": task_id},
                                            "agent_id": {"value": agent_id}}})

    def teardown(self):
        self.call({"type": "TEARDOWN"})

    def wait_state(self, task_id, states, timeout=60):
        def found():
            with self.lock:
                for s in self.statuses.get(task_id, []):
                    if s["state"] in states:
                        return s
            return None
        return wait_for(f"task {task_id} in {states} (seen: {self.states(task_id)})",
                        found, timeout, 0.05)

    def states(self, task_id):
        with self.lock:
            return [s["state"] for s in self.statuses.get(task_id, [])]


TERMINAL = ("TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR",
            "TASK_DROPPED", "TASK_GONE")



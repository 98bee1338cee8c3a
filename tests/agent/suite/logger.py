# Part of the agent suite (tests/agent/run); see its docstring for the checks.
"""Checks (n), (p), (q), (t), (u): the container logger through a real shipper."""

import http.client
import json
import os
import re
import signal
import statistics
import subprocess
import time
import traceback
import uuid

from .common import Daemon, REPO, free_port, http_ok, log, read, wait_for
from .scheduler import TERMINAL


class LoggerPhase:
    def shipper_binary(self):
        targets = [os.path.join(REPO, "target")]
        if os.environ.get("CARGO_TARGET_DIR"):
            targets.insert(0, os.environ["CARGO_TARGET_DIR"])
        # The newest build: a release binary left from an earlier build must not
        # stand in for the code under test.
        found = [os.path.join(t, b, "rein-log-shipper") for t in targets
                 for b in ("release", "debug")]
        found = [p for p in found if os.path.exists(p)]
        return max(found, key=os.path.getmtime) if found else None

    def osmem_binary(self):
        """osmem-server (PyPI osmem-server, an Elasticsearch-compatible server)."""
        try:
            out = subprocess.run(
                ["python3", "-c", "import osmem_server,os;"
                 "print(os.path.dirname(osmem_server.__file__))"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True)
        except (OSError, subprocess.CalledProcessError):
            return None
        path = os.path.join(out.stdout.strip(), "bin", "osmem-server")
        return path if os.access(path, os.X_OK) else None

    def start_es(self):
        """Starts osmem-server on a free loopback port; its port, or None."""
        binary = self.osmem_binary()
        if not binary:
            return None
        port = free_port()
        self.daemons.append(Daemon("osmem", [binary, "-addr", f"127.0.0.1:{port}",
                                             "-no-stdin-watch", "-no-ja"],
                                   self.tmp, self.env))
        self.daemons[-1].start()
        wait_for("osmem-server", lambda: http_ok(port, "/"), 20, 0.2)
        return port

    def run_logger(self):
        r = self.results
        shipper = self.shipper_binary()
        if not shipper:
            for c in ("n", "p", "q"):
                self.skip(c, "no rein-log-shipper built (cargo build --release -p "
                          "rein-logger)")
            return
        es_port = self.start_es()
        sock = os.path.join(self.tmp, "shipper.sock")
        state = os.path.join(self.tmp, "shipper-state")
        conf = os.path.join(self.tmp, "shipper.conf")
        with open(conf, "w") as f:
            f.write(f"socket = {sock}\nstate_dir = {state}\n")
            if es_port:
                # Plain http, one fixed index; gzip as in production.
                f.write(f"es_url = http://127.0.0.1:{es_port}\nes_index = {self.ES_INDEX}\n"
                        "es_backoff_max = 2s\n")
        self.daemons.append(Daemon("shipper", [shipper, "run", "--config", conf],
                                   self.tmp, self.env))
        self.daemons[-1].start()
        wait_for("the shipper's socket", lambda: os.path.exists(sock), 20)
        manifest = self.write_manifest("modules-log.json", {"rein_ContainerLogger": {
            "shipper_socket": sock, "default_sink": "none",
            "allowed_sinks": "none,elasticsearch" if es_port else "none"}})
        ag = self.agent("agent-log", free_port(), "filesystem/posix,cgroups/cpu",
                        self.root_log, manifest,
                        extra=["--container_logger=rein_ContainerLogger"])
        ag.start()
        ag_id = self.agent_id(ag)
        log(f"agent-log registered: {ag_id}")

        task = "logger-" + uuid.uuid4().hex[:6]
        self.sched.launch(ag_id, task, "echo $$ > task.pid; i=0; while [ $i -lt 300 ]; "
                          "do echo rein-line-$i; i=$((i+1)); sleep 0.1; done; sleep 600")
        st = self.sched.wait_state(task, ("TASK_RUNNING",) + TERMINAL, 90)
        if st["state"] != "TASK_RUNNING":
            raise RuntimeError(f"logger task: {st['state']}: {st.get('message')}")
        _, sandbox = wait_for("the logger task's container",
                              lambda: self.container_of(ag, task), 20)
        pid = int(wait_for("task.pid", lambda: read(os.path.join(sandbox, "task.pid"))
                           .strip(), 20))
        fd1 = os.readlink(f"/proc/{pid}/fd/1")

        def lines():
            return re.findall(r"^rein-line-(\d+)$", read(os.path.join(sandbox, "stdout")),
                              re.M)
        wait_for("10 lines in the sandbox stdout", lambda: len(lines()) >= 10, 20)
        before = len(lines())
        before_bytes = os.path.getsize(os.path.join(sandbox, "stdout"))
        self.restart_agent(ag, ag_id)
        try:
            wait_for("lines after the restart", lambda: len(lines()) >= before + 30, 30)
        except TimeoutError:
            pass
        got = [int(x) for x in lines()]
        # The worker splices the pipe into the sandbox file: every byte it has put
        # there is counted (counters.json is rewritten every second).
        counters = json.loads(read(os.path.join(state, "counters.json"))).get("reader", {})
        spliced = counters.get("bytes_read", 0)
        registered = counters.get("containers_registered", 0)
        in_order = got == list(range(len(got)))
        running = self.sched.states(task)[-1] == "TASK_RUNNING"
        r.record("n", fd1.startswith("pipe:") and in_order and len(got) >= before + 30
                 and spliced >= before_bytes and registered >= 1 and running,
                 f"task stdout is {fd1}; {before} lines before the agent SIGKILL, "
                 f"{len(got)} after its restart, in order {in_order}; shipper bytes_read "
                 f"{spliced} (>= {before_bytes} in the file at the SIGKILL), "
                 f"containers_registered {registered}; task still {self.sched.states(task)[-1]}")
        self.sched.kill(task, ag_id)
        self.sched.wait_state(task, TERMINAL, 60)

        self.with_es("p", es_port, lambda: self.run_logger_es(ag, ag_id, es_port))
        self.with_es("u", es_port, lambda: self.run_logger_files(ag, ag_id, es_port))
        if self.wants("q"):
            self.run_burst(ag, ag_id, self.baseline()[1])
        self.with_es("t", es_port, lambda: self.run_wedged(ag_id, es_port, state))

    def with_es(self, check, es_port, run):
        """Runs `check`, which needs osmem-server: an exception fails that check only."""
        if not es_port:
            self.skip(check, "osmem-server not installed (pip install osmem-server==0.1.6)")
        elif self.wants(check):
            try:
                run()
            except Exception as e:  # noqa: BLE001 - the other checks still run
                traceback.print_exc()
                self.results.record(check, False, f"{type(e).__name__}: {e}")

    # -- (t) a wedged shipper ------------------------------------------------------------

    def run_wedged(self, ag_id, port, state, n=20, lines=20):
        """The shipper's worker is stopped (SIGSTOP: it accepts nothing, answers nothing)
        while a burst of n tasks launches: each prepare() may wait shipper_timeout (1 s)
        at most, and not one after another; the tasks write their sandbox files, and once
        the worker resumes those files are shipped, every line once."""
        r = self.results
        worker = int(read(os.path.join(state, "worker.pid")).strip())
        cmd = f"i=0; while [ $i -lt {lines} ]; do echo wedge-$i; i=$((i+1)); done; sleep 600"
        os.kill(worker, signal.SIGSTOP)
        log(f"(t) shipper worker {worker} stopped")
        try:
            sent, ids = self.sched.launch_burst(ag_id, "wedge", n, cmd, timeout=90,
                                                labels={"rein.log.sink": "elasticsearch"})
            states = [self.sched.wait_state(t, ("TASK_RUNNING",) + TERMINAL, 180)
                      for t in ids]
        finally:
            os.kill(worker, signal.SIGCONT)
        running = [s for s in states if s["state"] == "TASK_RUNNING"]
        took = max(s["_received"] for s in states) - sent
        log(f"(t) {len(running)} of {n} running {took:.2f} s after the ACCEPT; worker resumed")

        def shipped():
            self.es_call(port, "POST", f"/{self.ES_INDEX}/_refresh")
            found = self.es_call(port, "POST", f"/{self.ES_INDEX}/_search", {
                "size": 10000, "query": {"match_all": {}}})
            by_task = {t: [] for t in ids}
            for h in found["hits"]["hits"]:
                src = h["_source"]
                tid = src.get("mesos", {}).get("task", {}).get("id")
                if tid in by_task and src.get("stream") == "stdout":
                    by_task[tid].append(src)
            return {t: self.numbered(d, "wedge-") for t, d in by_task.items()}
        try:
            wait_for(f"every line of the {n} tasks in Elasticsearch", lambda: all(
                len(c) >= lines for c in shipped().values()), 120, 1)
        except TimeoutError:
            pass
        time.sleep(2)  # a line shipped twice would show now
        counts = shipped()
        want = {i: 1 for i in range(lines)}
        wrong = {t: sorted(c.items())[:5] for t, c in counts.items() if c != want}
        reader = json.loads(read(os.path.join(state, "counters.json"))).get("reader", {})
        fb = {k: reader.get(k) for k in ("fallback_containers", "fallback_reported",
                                         "fallback_shipped", "registrations_refused")}
        # Serialised, the burst would take n x shipper_timeout (20 s) at least.
        ok = len(running) == n and took < n / 2 and not wrong
        detail = (f"{len(running)} of {n} tasks running {took:.2f} s after the ACCEPT with "
                  f"the worker stopped (serialised waits would take >= {n} s); after SIGCONT "
                  f"{n - len(wrong)} of {n} tasks have every one of their {lines} lines in "
                  f"Elasticsearch exactly once (wrong: {dict(list(wrong.items())[:3])}); "
                  f"shipper {json.dumps(fb)}")
        log(f"(t) {detail}")
        r.record("t", ok, detail)
        for t in ids:
            self.sched.kill(t, ag_id)
        for t in ids:
            self.sched.wait_state(t, TERMINAL, 60)

    # -- (p) the Elasticsearch sink ----------------------------------------------------

    ES_INDEX = "rein-suite-logs"

    def es_call(self, port, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None,
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{method} {path} -> {resp.status}: {data[:200]!r}")
            return json.loads(data)
        finally:
            conn.close()

    def es_docs(self, port, task_id):
        """The _source of every document of a task in our index (after a refresh)."""
        self.es_call(port, "POST", f"/{self.ES_INDEX}/_refresh")
        found = self.es_call(port, "POST", f"/{self.ES_INDEX}/_search", {
            "size": 10000, "query": {"match_all": {}}})
        return [h["_source"] for h in found["hits"]["hits"]
                if h["_source"].get("mesos", {}).get("task", {}).get("id") == task_id]

    def es_count(self, port):
        self.es_call(port, "POST", f"/{self.ES_INDEX}/_refresh")
        return self.es_call(port, "GET", f"/{self.ES_INDEX}/_count")["count"]

    @staticmethod
    def numbered(docs, prefix):
        """line number -> how many documents carry it."""
        counts = {}
        for d in docs:
            m = re.fullmatch(re.escape(prefix) + r"(\d+)", str(d.get("message", "")))
            if m:
                counts[int(m.group(1))] = counts.get(int(m.group(1)), 0) + 1
        return counts

    def wait_lines(self, port, task_id, prefix, n, timeout):
        try:
            wait_for(f"{n} lines of {task_id} in Elasticsearch",
                     lambda: len(self.numbered(self.es_docs(port, task_id), prefix)) >= n,
                     timeout, 0.5)
        except TimeoutError:
            pass
        time.sleep(2)  # resends after a restart would arrive now: let them show
        docs = self.es_docs(port, task_id)
        # stderr has the command executor's own lines; the task prints to stdout.
        return docs, self.numbered([d for d in docs if d.get("stream") == "stdout"], prefix)

    @staticmethod
    def same_place(docs):
        """Documents sharing (container, stream, offset): a line stored twice."""
        seen, twice = set(), []
        for d in docs:
            key = (d.get("container", {}).get("id"), d.get("stream"),
                   d.get("log", {}).get("offset"))
            if key in seen:
                twice.append(key)
            seen.add(key)
        return twice

    def run_logger_es(self, ag, ag_id, port):
        r = self.results
        labels = {"rein.log.sink": "elasticsearch", "team": "rein-suite"}
        # Phase 1: 200 lines, every fifth a JSON object (merged into the record).
        n1, task = 200, "es-" + uuid.uuid4().hex[:6]
        self.sched.launch(ag_id, task, (
            f"i=0; while [ $i -lt {n1} ]; do if [ $((i % 5)) -eq 0 ]; then "
            "printf '{\"msg\":\"es1-%d\",\"level\":\"warn\",\"seq\":%d}\\n' $i $i; "
            "else echo es1-$i; fi; i=$((i+1)); done; sleep 600"), labels)
        st = self.sched.wait_state(task, ("TASK_RUNNING",) + TERMINAL, 90)
        if st["state"] != "TASK_RUNNING":
            raise RuntimeError(f"es task: {st['state']}: {st.get('message')}")
        container, _ = wait_for("the es task's container",
                                lambda: self.container_of(ag, task), 20)
        docs, counts = self.wait_lines(port, task, "es1-", n1, 60)
        once = counts == {i: 1 for i in range(n1)}
        bad_meta = [d for d in docs if not (
            d.get("container", {}).get("id") == container
            and d.get("mesos", {}).get("task", {}).get("id") == task
            and d.get("stream") in ("stdout", "stderr")
            and d.get("labels", {}).get("rein_log_sink") == "elasticsearch"
            and d.get("labels", {}).get("team") == "rein-suite")]
        json_docs = [d for d in docs if d.get("seq") is not None]
        bad_json = [d for d in json_docs if not (
            d.get("log", {}).get("level") == "warn"
            and d.get("message") == f"es1-{d['seq']}")]
        dup1 = sorted(k for k, v in counts.items() if v > 1)
        missing1 = sorted(set(range(n1)) - set(counts))
        stdout_docs = [d for d in docs if d.get("stream") == "stdout"]
        sample = ({k: stdout_docs[0].get(k) for k in ("container", "stream", "labels", "mesos")}
                  if stdout_docs else {})
        detail1 = (f"{len(stdout_docs)} stdout + {len(docs) - len(stdout_docs)} stderr docs "
                   f"of {task}, stdout lines once {once} (missing {missing1[:10]}, "
                   f"duplicated {dup1[:10]}); metadata wrong in {len(bad_meta)}; JSON lines "
                   f"{len(json_docs)} (expected {n1 // 5}), merged wrong in {len(bad_json)}; "
                   f"e.g. {json.dumps(sample)}")
        ok1 = (once and len(stdout_docs) == n1 and not bad_meta and len(json_docs) == n1 // 5
               and not bad_json)
        log(f"(p) phase 1: {detail1}")
        self.sched.kill(task, ag_id)
        self.sched.wait_state(task, TERMINAL, 60)

        # Phase 2: a task printing continuously across a SIGKILL + restart of the agent.
        n2, task2 = 600, "es-restart-" + uuid.uuid4().hex[:6]
        sandbox = self.launch_running(ag, ag_id, task2, (
            f"i=0; while [ $i -lt {n2} ]; do echo es2-$i; "
            "i=$((i+1)); sleep 0.03; done; sleep 600"), labels, "es restart")
        stdout = os.path.join(sandbox, "stdout")
        at_kill = self.restart_after(ag, ag_id, stdout, 50, 30)
        at_register = read(stdout).count("\n")
        # The shipper's deadline starts once the task has printed everything (a
        # loaded or emulated machine prints far slower than 0.03 s a line).
        wait_for(f"{n2} lines in the sandbox stdout",
                 lambda: read(stdout).count("\n") >= n2, 600, 0.5)
        docs2, counts2 = self.wait_lines(port, task2, "es2-", n2, 90)
        once2 = counts2 == {i: 1 for i in range(n2)}
        dup2 = sorted(k for k, v in counts2.items() if v > 1)
        missing2 = sorted(set(range(n2)) - set(counts2))
        stdout2 = [d for d in docs2 if d.get("stream") == "stdout"]
        # Every document of the index is one of the two tasks' and stored once.
        total = self.es_count(port)
        every = self.es_docs(port, task) + self.es_docs(port, task2)
        twice = self.same_place(every)
        running = self.sched.states(task2)[-1] == "TASK_RUNNING"
        detail2 = (f"restart task: {at_kill} lines printed at the SIGKILL, {at_register} at "
                   f"the re-registration; {len(stdout2)} stdout docs of {n2} lines, once "
                   f"{once2} (missing {missing2[:10]}, duplicated {dup2[:10]}); index _count "
                   f"{total} = both tasks' docs {len(every)} (stdout and stderr), "
                   f"same stream offset twice {twice[:5]}; task still "
                   f"{self.sched.states(task2)[-1]}")
        log(f"(p) phase 2: {detail2}")
        r.record("p", ok1 and once2 and len(stdout2) == n2 and at_kill < n2
                 and total == len(every) and not twice and running,
                 f"{detail1}; {detail2}")
        self.sched.kill(task2, ag_id)
        self.sched.wait_state(task2, TERMINAL, 60)

    def launch_running(self, ag, ag_id, task, cmd, labels, what):
        """Launches `task` and waits until it runs; its sandbox."""
        self.sched.launch(ag_id, task, cmd, labels)
        st = self.sched.wait_state(task, ("TASK_RUNNING",) + TERMINAL, 90)
        if st["state"] != "TASK_RUNNING":
            raise RuntimeError(f"{what} task: {st['state']}: {st.get('message')}")
        return wait_for(f"the {what} task's container", lambda: self.container_of(ag, task),
                        20)[1]

    def restart_after(self, ag, ag_id, stdout, lines, timeout):
        """SIGKILLs and restarts the agent once the sandbox `stdout` has `lines` lines;
        how many it had then."""
        wait_for(f"{lines} lines in the sandbox stdout",
                 lambda: read(stdout).count("\n") >= lines, timeout)
        at_kill = read(stdout).count("\n")
        self.restart_agent(ag, ag_id, f" ({at_kill} lines printed)")
        return at_kill

    # -- (u) log files in the sandbox ---------------------------------------------------

    def run_logger_files(self, ag, ag_id, port, n=400):
        """A task writes stdout and two log files; logs/app.log is renamed away after
        150 lines, gc.log copied and truncated after 250 (copytruncate). The agent is
        SIGKILLed and restarted meanwhile. Every line of each file and of stdout is in
        Elasticsearch once, with its file's path and tag."""
        r = self.results
        task = "files-" + uuid.uuid4().hex[:6]
        labels = {"rein.log.sink": "elasticsearch",
                  "rein.log.files": "app=logs/*.log,gc=gc.log;multiline=off"}
        sandbox = self.launch_running(ag, ag_id, task, (
            f"mkdir -p logs; i=0; while [ $i -lt {n} ]; do echo fo-$i; "
            "echo fa-$i >> logs/app.log; echo fg-$i >> gc.log; i=$((i+1)); "
            "if [ $i -eq 150 ]; then mv logs/app.log logs/app.log.1; fi; "
            "if [ $i -eq 250 ]; then cp gc.log gc.log.1; : > gc.log; fi; "
            "sleep 0.03; done; echo done > finished; sleep 600"), labels, "files")
        at_kill = self.restart_after(ag, ag_id, os.path.join(sandbox, "stdout"), 100, 60)
        wait_for("the task's last line", lambda: os.path.exists(
            os.path.join(sandbox, "finished")), 600, 0.5)

        def by_file():
            docs = self.es_docs(port, task)
            out = {}
            for name, prefix, pick in (
                    ("stdout", "fo-", lambda d: d.get("stream") == "stdout"),
                    ("app", "fa-", lambda d: d.get("log", {}).get("file", {}).get("tag")
                     == "app"),
                    ("gc", "fg-", lambda d: d.get("log", {}).get("file", {}).get("tag")
                     == "gc")):
                out[name] = self.numbered([d for d in docs if pick(d)], prefix)
            return docs, out
        try:
            wait_for(f"{n} lines of each file in Elasticsearch", lambda: all(
                len(c) >= n for c in by_file()[1].values()), 120, 1)
        except TimeoutError:
            pass
        time.sleep(2)  # a line shipped twice would show now
        docs, counts = by_file()
        want = {i: 1 for i in range(n)}
        wrong = {k: {"missing": sorted(set(range(n)) - set(c))[:8],
                     "twice": sorted(i for i, v in c.items() if v > 1)[:8]}
                 for k, c in counts.items() if c != want}
        paths = sorted({(d["log"]["file"].get("tag"), d["log"]["file"].get("path"))
                        for d in docs if d.get("stream") == "file"})
        ok_paths = paths == [("app", "logs/app.log"), ("gc", "gc.log")]
        detail = (f"{at_kill} stdout lines at the agent SIGKILL; lines once per file: "
                  f"{ {k: len(c) for k, c in counts.items()} } of {n} each, wrong "
                  f"{json.dumps(wrong)}; files {paths}")
        log(f"(u) {detail}")
        r.record("u", not wrong and ok_paths and at_kill < n, detail)
        self.sched.kill(task, ag_id)
        self.sched.wait_state(task, TERMINAL, 60)

    # -- (q) launch burst with and without the logger ----------------------------------

    def run_burst(self, ag, ag_id, base_id, n=50):
        r = self.results
        rates = {"with logger (agent-log)": [], "without (baseline agent)": []}
        lines, complete = [], True
        for rnd in range(2):
            order = [("with logger (agent-log)", ag_id, "log"),
                     ("without (baseline agent)", base_id, "base")]
            if rnd % 2:
                order.reverse()
            for label, aid, short in order:
                sent, ids = self.sched.launch_burst(aid, f"burst-{short}-{rnd}", n, "sleep 2",
                                                    timeout=90)
                states = [self.sched.wait_state(t, ("TASK_RUNNING",) + TERMINAL, 240)
                          for t in ids]
                running = [s for s in states if s["state"] == "TASK_RUNNING"]
                last = max(s["_received"] for s in states)
                rate = len(running) / (last - sent)
                for t in ids:
                    self.sched.wait_state(t, TERMINAL, 120)
                if len(running) != n:
                    complete = False
                    bad = [s for s in states if s["state"] != "TASK_RUNNING"]
                    lines.append(f"  {label}: {len(bad)} tasks not running, e.g. "
                                 f"{bad[0]['state']} {bad[0].get('message')!r}")
                rates[label].append(rate)
                lines.append(f"  round {rnd + 1} {label:26} {n} tasks, ACCEPT -> last "
                             f"TASK_RUNNING {last - sent:6.2f} s = {rate:6.2f} tasks/s")
        with_l = statistics.mean(rates["with logger (agent-log)"])
        without = statistics.mean(rates["without (baseline agent)"])
        ratio = with_l / without * 100
        lines.append(f"  mean: with logger {with_l:.2f} tasks/s, without {without:.2f} "
                     f"tasks/s, ratio {ratio:.1f} % (goal >= 95 %"
                     f"{'' if ratio >= 95 else ', NOT MET'})")
        print(f"launch burst ({n} tasks in one ACCEPT):\n" + "\n".join(lines), flush=True)
        r.record("q", complete, f"with logger {with_l:.2f} tasks/s, without {without:.2f} "
                 f"tasks/s, ratio {ratio:.1f} % (goal >= 95 %, reported only)")


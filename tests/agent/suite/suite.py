# Part of the agent suite (tests/agent/run); see its docstring for the checks.
"""The phases and the suite that runs them. Each phase starts the agents it needs
(the baseline agent is shared and started on first use), so any subset runs alone
and a failing phase does not stop the others."""

from collections import namedtuple

from .base import SuiteBase
from .common import V2_LEFT_OUT
from .blkio_disk import BlkioDiskPhase
from .egress import EgressPhase
from .logger import LoggerPhase
from .net_cls import NetClsPhase
from .tenant import TenantPhase

# checks: what the phase records; also_for: checks of later phases that need it to
# have run (the leftover check (o) looks at what the blkio/disk and egress tasks left).
Phase = namedtuple("Phase", "name checks also_for method")

PHASES = [
    Phase("net_cls", "abcdefg", "", "run_net_cls"),
    Phase("blkio+disk", "hijk", "o", "run_blkio_disk"),
    Phase("egress", "lm", "o", "run_egress"),
    Phase("logger", "npqtu", "", "run_logger"),
    Phase("leftovers", "o", "", "check_io_egress_leftovers"),
    Phase("tenant", "rs", "", "run_tenant"),
]


# The cgroup v2 agent (tests/vm/agent): the phases that apply there.
PHASES_V2 = [
    Phase("blkio+disk", "AhijkRND", "o", "run_blkio_disk"),
    Phase("egress", "lm", "o", "run_egress"),
    Phase("logger", "npu", "", "run_logger"),
    Phase("leftovers", "o", "", "check_io_egress_leftovers"),
]


class Suite(NetClsPhase, BlkioDiskPhase, EgressPhase, LoggerPhase, TenantPhase, SuiteBase):
    def run(self):
        if self.mode == "v2":
            for checks, why in V2_LEFT_OUT.items():
                print(f"left out on cgroup v2 ({', '.join(checks)}): {why}", flush=True)
            SuiteBase.run(self, PHASES_V2)
        else:
            SuiteBase.run(self, PHASES)

"""What tinykvm.stats() reports per program: requests, failures by reason, restarts, time, steals."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProgramStats:
    requests: int = 0                   # backend requests (program(), to_string(), synth())
    failures: dict[str, int] = field(default_factory=dict)   # by ProgramError.reason
    starts: int = 0                     # processes started
    restarts: int = 0                   # processes started in place of one that failed or was killed
    request_time: float = 0.0           # seconds spent in backend requests, all together
    steal_started: int = 0              # steal() calls that reached a program
    steal_accepted: int = 0
    steal_refused: int = 0
    steal_failed: int = 0               # the program died or did not answer in time
    steal_closed: dict[str, int] = field(default_factory=dict)  # accepted ones closed since, by reason

    def fail(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def as_dict(self, memory: int, held: int) -> dict:
        """The JSON of tinykvm.stats() for this program (memory: bytes its processes use now)."""
        return {
            "requests": self.requests,
            "failures": dict(sorted(self.failures.items())),
            "starts": self.starts,
            "restarts": self.restarts,
            "request_time": round(self.request_time, 6),
            "memory": memory,
            "steal": {"started": self.steal_started, "accepted": self.steal_accepted,
                      "refused": self.steal_refused, "failed": self.steal_failed,
                      "closed": dict(sorted(self.steal_closed.items())), "held": held},
        }

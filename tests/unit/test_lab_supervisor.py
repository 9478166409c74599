"""The lab supervisor: its restart policy (pure), and the loop over real short programs
(no root: the programs are small Python one-liners and `sleep`)."""

from __future__ import annotations

import io
import os
import signal
import sys
from pathlib import Path

from tests.polling import wait_for
from yunhan.lab.supervisor import (
    BACKOFF,
    FAILED,
    RUNNING,
    Program,
    RestartPolicy,
    Supervisor,
    SupervisorState,
    describe_exit,
    program_line,
)
from yunhan.supervised import CAUSE_ENV, RESTARTS_ENV


def test_policy_backs_off_exponentially_and_gives_up_on_a_crash_loop() -> None:
    p = RestartPolicy(base=0.5, cap=4.0, stable=10.0, limit=5)
    streak, delays = 0, []
    for _ in range(6):
        streak = p.streak(streak, ran=1.0)  # every run dies young
        delays.append(p.delay(streak))
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, None]
    # A run that lasted starts a new streak: the next restart is quick again.
    assert p.streak(4, ran=10.0) == 1 and p.delay(1) == 0.5


def test_exit_causes_are_words() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with code 3"
    assert "unknown" in describe_exit(None)


def _until(sup: Supervisor, cond: object, timeout: float = 10.0) -> None:
    def step() -> bool:
        sup.tick()
        return bool(cond() if callable(cond) else cond)

    wait_for(step, timeout, "supervisor state")


def test_a_dying_program_is_restarted_told_why_and_left_down_in_a_crash_loop(
    tmp_path: Path,
) -> None:
    out = tmp_path / "env"
    code = (
        "import os,sys\n"
        f"open({str(out)!r},'a').write(os.environ.get({RESTARTS_ENV!r},'0')+':'"
        f"+os.environ.get({CAUSE_ENV!r},'')+'\\n')\n"
        "sys.exit(3)\n"
    )
    state = tmp_path / "supervisor.json"
    sup = Supervisor(state, policy=RestartPolicy(base=0.01, cap=0.05, stable=5.0, limit=3))
    sup.read_programs(
        io.StringIO(
            program_line("p", "agent", [sys.executable, "-c", code], tmp_path / "p.log", None)
        )
    )
    _until(sup, lambda: sup.state.programs and sup.state.programs[0].state == FAILED)
    p = SupervisorState.load(state).programs[0]  # type: ignore[union-attr]
    assert (p.state, p.restarts, p.last_exit) == (FAILED, 3, "exited with code 3")
    assert out.read_text().splitlines() == [
        "0:",
        "1:exited with code 3",
        "2:exited with code 3",
        "3:exited with code 3",
    ]
    # `yunhan up` on it: a fresh streak, started again at once.
    sup.revive()
    _until(sup, lambda: sup.state.programs[0].restarts == 4)


def test_a_new_supervisor_adopts_what_runs_and_sees_it_die(tmp_path: Path) -> None:
    state = tmp_path / "supervisor.json"
    first = Supervisor(state, policy=RestartPolicy(base=0.01))
    first.add(Program("s", "server", ["sleep", "60"], str(tmp_path / "s.log")))
    _until(first, lambda: first.state.programs and first.state.programs[0].state == RUNNING)
    pid = first.state.programs[0].pid
    try:
        # The first supervisor is gone (SIGKILL): its child lives on, and a new one adopts it.
        second = Supervisor(state)
        second.tick()
        prog = second.state.programs[0]
        assert (prog.state, prog.pid, prog.restarts) == (RUNNING, pid, 0)
        os.kill(pid, signal.SIGKILL)
        # Not its child: it polls /proc and cannot know the status (its parent reaps it).
        os.waitpid(pid, 0)
        _until(second, lambda: second.state.programs[0].restarts == 1)
        prog = second.state.programs[0]
        assert prog.state == RUNNING and prog.pid != pid
        assert "unknown" in prog.last_exit
        os.kill(prog.pid, signal.SIGKILL)
        _until(second, lambda: second.state.programs[0].restarts == 2)
        assert second.state.programs[0].last_exit == "killed by SIGKILL"
    finally:
        for s in SupervisorState.load(state).programs:  # type: ignore[union-attr]
            if s.alive():
                os.kill(s.pid, signal.SIGKILL)


def test_a_program_handed_again_while_it_runs_is_left_alone(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path / "supervisor.json", policy=RestartPolicy(base=0.01))
    prog = Program("s", "server", ["sleep", "60"], str(tmp_path / "s.log"))
    sup.add(prog)
    _until(sup, lambda: sup.state.programs and sup.state.programs[0].state == RUNNING)
    pid = sup.state.programs[0].pid
    try:
        sup.add(Program("s", "server", ["sleep", "60"], str(tmp_path / "s.log")))
        sup.tick()
        sup.tick()
        assert [(p.pid, p.state) for p in sup.state.programs] == [(pid, RUNNING)]
        assert sup.state.programs[0].state != BACKOFF
    finally:
        os.kill(pid, signal.SIGKILL)

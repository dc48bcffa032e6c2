"""The processes a run starts (and stops on the way out), ports, CPU and memory accounting."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from pathlib import Path

from . import ROOT, log


class Procs:
    """Every process this run started, so that all of them are stopped on the way out."""

    def __init__(self) -> None:
        self.popens: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.async_pids: dict[int, str] = {}
        # servers that scripts start and stop (Kafka, PostgreSQL): what, and the command that stops it
        self.scripted: list[tuple[str, list[str]]] = []

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        logfile: Path,
        cwd: Path = ROOT,
        cpus: set[int] | None = None,
    ) -> subprocess.Popen[bytes]:
        out = open(logfile, "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
        )
        out.close()
        if cpus is not None:
            # Set before the process starts its threads (it is still starting Python): they inherit it.
            os.sched_setaffinity(proc.pid, cpus)
        self.popens.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> int | None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"pid {proc.pid} did not stop in {timeout}s; killing it")
                proc.kill()
                proc.wait(10)
        self.popens = [(n, p) for n, p in self.popens if p is not proc]
        return proc.returncode

    def stop_all(self) -> None:
        for pid, name in list(self.async_pids.items()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                log(f"killed leftover {name} (pid {pid})")
        self.async_pids.clear()
        for name, proc in list(self.popens):
            if proc.poll() is None:
                log(f"stopping {name} (pid {proc.pid})")
            with contextlib.suppress(Exception):
                self.stop(proc, 15)
        while self.scripted:
            name, argv = self.scripted.pop()
            log(f"stopping {name}")
            with contextlib.suppress(Exception):
                subprocess.run(
                    argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=90, check=False
                )


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM / VmRSS in kB."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(rest.split()[0])
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICK


def descendants(roots: list[int]) -> set[int]:
    """These processes and all their descendants (alive now)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
    tree, frontier = set(roots), list(roots)
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    return tree


def tree_cpu_seconds(roots: list[int]) -> float:
    """utime + stime of these processes and all their descendants (alive now)."""
    return sum(c for c in (cpu_seconds(pid) for pid in descendants(roots)) if c == c)  # NaN: gone meanwhile


def pid_from_file(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(path.read_text().split()[0])
    return None


def machine_cpu() -> tuple[float, float, float]:
    """(busy, total, stolen) jiffies of all CPUs, from /proc/stat.

    Stolen time (a virtual machine's CPU given to other guests by the host) counts as busy:
    it is load from outside the run that no process here shows.
    """
    fields = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return total - idle, total, fields[7]


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def wait_until(check, proc: subprocess.Popen[bytes], logfile: Path, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{tail(logfile)}")
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready in {timeout}s:\n{tail(logfile)}")

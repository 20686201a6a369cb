"""Runs untrusted Python (model-written code) in a throwaway, resource-limited process tree.

Layers, strongest available first (probed once per process, recorded in ExecResult.isolation):
  netns+ipcns+pidns+mountns+uid     as root: `unshare` gives no network, a private System V IPC
                              namespace (shared memory, semaphores and message queues die with the
                              run), a PID namespace whose PID 1 (_sandbox_init.py) takes every
                              descendant down with it, fresh tmpfs over /tmp, /var/tmp, /dev/shm and
                              /run, and empty directories in place of the project tree, its
                              ../shared and the home directories (/root, /home); only the
                              interpreter's own directories are mounted back. The program runs as an
                              unprivileged uid leased for this run only, so it can write only its
                              own directory and signal only its own processes.
  userns+netns+ipcns+pidns+mountns  not root but user namespaces allowed: the same without the uid drop.
  uid+rlimits / rlimits       no usable `unshare`: no network isolation, best-effort cleanup.
A run may come with a judge program (run_python(..., judge=...)): trusted code, started before the
program in a process of its own that cannot be traced, and the only holder of the verdict pipe
(ExecResult.verdict). It calls the program's functions by message (plain data both ways).
Always: python -I, a minimal environment, a fresh working directory, rlimits on CPU time, address
space, file size, process count and core dumps, and a wall-clock kill of the whole tree. Output
goes to files (not pipes) so a flood costs the caller neither memory nor a blocked child; only a
capped head and tail are read back.
"""
from __future__ import annotations

import fcntl
import math
import os
import select
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

_INIT = Path(__file__).with_name("_sandbox_init.py")
_UID_BASE, _UID_COUNT = 61000, 256  # unused by Debian-family systems (system range ends at 999)
_UID_LOCK_DIR = Path(tempfile.gettempdir()) / "reasoner-sandbox-uids"


def _hidden_directories() -> list[str]:
    """What a program must not see: the project tree (when we run from a checkout), ../shared, homes."""
    hidden = ["/root", "/home"]
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file() and (repo / "reasoner").is_dir():
        hidden += [str(repo), str(repo.parent / "shared")]
    return [path for path in hidden if os.path.isdir(path) and path != "/"]


_HIDDEN = _hidden_directories()
_SITE_PACKAGES = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    # Threads count against the process limit; one BLAS thread per core would eat it on big hosts.
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class ExecResult:
    ok: bool  # exited 0 within the time
    timed_out: bool
    returncode: int | None  # exit code, or -signal; None when killed for time
    stdout: str  # capped: head and tail of the output
    stderr: str
    duration_s: float
    isolation: str  # which layers protected this run (see module docstring)
    verdict: str = ""  # what the judge wrote to its own pipe (runs with a judge only)


@dataclass(frozen=True)
class _Isolation:
    name: str
    command_prefix: tuple[str, ...]
    drop_uid: bool
    private_mounts: bool  # has a PID and mount namespace, which also handles cleanup


def run_python(
    program: str,
    timeout: float = 10.0,
    *,
    memory_mb: int = 1024,
    file_mb: int = 16,
    max_processes: int = 64,
    max_output_bytes: int = 64 * 1024,
    judge: str | None = None,
) -> ExecResult:
    """Runs program as a Python script in the sandbox; never raises for anything the program does.

    judge: trusted Python run beside the program (see the module docstring); its verdict pipe is
    open as `_VERDICT_FD`, and `_REQUEST_FD` / `_RESPONSE_FD` lead to the program, which finds
    its ends in the environment variable REASONER_RPC ("read_fd,write_fd").
    """
    return _execute(_isolation(), program, timeout, memory_mb, file_mb, max_processes, max_output_bytes, judge)


def run_many(
    programs: Sequence[str],
    timeout: float = 10.0,
    *,
    workers: int | None = None,
    judges: Sequence[str | None] | None = None,
    **limits,
) -> list[ExecResult]:
    """run_python over many programs, in parallel on all cores; results in input order."""
    _isolation()  # probe once up front rather than in every thread at the same time
    judges = list(judges) if judges is not None else [None] * len(programs)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: run_python(job[0], timeout, judge=job[1], **limits), zip(programs, judges)))


def _execute(isolation, program, timeout, memory_mb, file_mb, max_processes, max_output_bytes, judge=None) -> ExecResult:
    with tempfile.TemporaryDirectory(prefix="reasoner-sandbox-", ignore_cleanup_errors=True) as rundir, _uid_lease(
        isolation.drop_uid
    ) as uid:
        run = Path(rundir)
        (run / "main.py").write_text(program, encoding="utf-8", errors="surrogatepass")
        if judge is not None:  # readable by us only: the sandbox uid never sees the tests
            handle = os.open(run / "judge.py", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(handle, "w", encoding="utf-8", errors="surrogatepass") as file:
                file.write(judge)
        (run / "work").mkdir()
        run.chmod(0o711)  # the sandbox uid must reach work/, but not read the program's verdict files
        config = {
            "program": run / "main.py",
            "workdir": run / "work",
            "uid": "" if uid is None else uid,  # gid is the same number
            "private_mounts": int(isolation.private_mounts),
            "wall_s": timeout + 1.0,
            "site_packages": os.pathsep.join(_SITE_PACKAGES),
            "hide": os.pathsep.join(_HIDDEN),
            "judge": run / "judge.py" if judge is not None else "",
            "limits": _limits(timeout, memory_mb, file_mb, max_processes, uid is not None),
        }
        start = time.monotonic()
        returncode, timed_out, verdict = _spawn_and_wait(isolation, config, run, timeout)
        duration = time.monotonic() - start
        if not isolation.private_mounts and uid is not None:
            _kill_processes_of(uid)  # no PID namespace to do it for us
        return ExecResult(
            ok=returncode == 0 and not timed_out,
            timed_out=timed_out,
            returncode=returncode,
            stdout=_read_capped(run / "stdout", max_output_bytes),
            stderr=_read_capped(run / "stderr", max_output_bytes),
            duration_s=duration,
            isolation=isolation.name,
            verdict=verdict,
        )


def _limits(timeout: float, memory_mb: int, file_mb: int, max_processes: int, own_uid: bool) -> str:
    cpu_s = math.ceil(timeout) + 1
    # Without a uid of its own, the process count is shared with everything else this user runs.
    nproc = max_processes if own_uid else _count_processes_of(os.getuid()) + max_processes
    return f"cpu:{cpu_s},as:{memory_mb << 20},fsize:{file_mb << 20},nproc:{nproc},core:0"


def _spawn_and_wait(isolation: _Isolation, config: dict, run: Path, timeout: float) -> tuple[int | None, bool, str]:
    status_read, status_write = os.pipe()
    verdict_read, verdict_write = os.pipe()
    config["status_fd"] = status_write
    config["verdict_fd"] = verdict_write
    arguments = [f"{key}={value}" for key, value in config.items()]
    command = [*isolation.command_prefix, sys.executable, "-I", "-S", str(_INIT), *arguments]
    verdict = bytearray()
    reader = None
    try:
        with open(run / "stdout", "wb") as stdout, open(run / "stderr", "wb") as stderr:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, cwd=run, env=_ENV,
                start_new_session=True,  # its own group, away from our terminal's signals, killable at once
                pass_fds=(status_write, verdict_write),
            )
        os.close(status_write)
        os.close(verdict_write)
        status_write = verdict_write = None
        if config["judge"]:  # drain as it comes, so a talkative judge never blocks on a full pipe
            reader = threading.Thread(target=_drain, args=(verdict_read, verdict), daemon=True)
            reader.start()
        timed_out = _wait(proc, timeout)
        status = os.read(status_read, 64)
        if reader is not None:
            reader.join(5)
        return (int(status) if status and not timed_out else None), timed_out, verdict.decode("utf-8", "replace")
    finally:
        os.close(status_read)
        if reader is None or not reader.is_alive():
            os.close(verdict_read)
        for fd in (status_write, verdict_write):
            if fd is not None:
                os.close(fd)


def _drain(fd: int, into: bytearray, cap: int = 1 << 20) -> None:
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        if len(into) < cap:
            into += chunk


def _exited_within(proc: subprocess.Popen, timeout: float) -> bool:
    # Popen.wait(timeout) polls with sleeps of up to 50 ms, which would double the cost of a short
    # test; a pidfd wakes us the moment the child exits.
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        return bool(select.select([pidfd], [], [], timeout)[0])
    finally:
        os.close(pidfd)


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    timed_out = not _exited_within(proc, timeout)
    if timed_out:
        # Kill the init process first and let `unshare` reap it: by the time a PID namespace's init
        # has exited, the kernel has killed and reaped everything in it. Killing `unshare` first
        # would return a verdict while the namespace is still being torn down.
        for child in _children(proc.pid):
            _kill(child)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
    # The group: `unshare` itself if it is still there, and background children in the fallbacks.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    return timed_out


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


def _read_capped(path: Path, cap: int) -> str:
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size <= cap:
            data = file.read()
        else:
            head = file.read(cap // 2)
            file.seek(size - cap // 2)
            data = head + f"\n...[{size - cap} bytes cut]...\n".encode() + file.read()
    return data.decode("utf-8", errors="replace")


# ---------------------------------------------------------------- uids and processes


@contextmanager
def _uid_lease(wanted: bool) -> Iterator[int | None]:
    """An unprivileged uid no other sandbox run (in any process) holds until this one ends."""
    if not wanted:
        yield None
        return
    _UID_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    for uid in range(_UID_BASE, _UID_BASE + _UID_COUNT):
        lock = open(_UID_LOCK_DIR / str(uid), "a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            continue
        try:
            yield uid
            return
        finally:
            lock.close()  # closing releases the flock
    raise RuntimeError(f"all {_UID_COUNT} sandbox uids are in use")


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    pids.append(int(entry))
            except OSError:  # exited while we looked
                pass
    return pids


def _count_processes_of(uid: int) -> int:
    return len(_pids_of(uid)) if os.path.isdir("/proc") else 0


def _kill_processes_of(uid: int) -> None:
    for _ in range(100):  # a fork flood can add processes while we kill; the nproc limit bounds it
        pids = _pids_of(uid)
        if not pids:
            return
        for pid in pids:
            _kill(pid)
        time.sleep(0.01)


# ---------------------------------------------------------------- choosing the isolation

_chosen: _Isolation | None = None
_choose_lock = threading.Lock()


def _isolation() -> _Isolation:
    global _chosen
    with _choose_lock:
        if _chosen is None:
            _chosen = next(candidate for candidate in _candidates() if _works(candidate))
        return _chosen


def _candidates() -> list[_Isolation]:
    unshare = shutil.which("unshare")
    namespaces = ("--net", "--ipc", "--pid", "--mount", "--fork", "--kill-child")
    is_root = os.geteuid() == 0
    candidates = []
    if unshare and is_root:
        candidates.append(_Isolation("netns+ipcns+pidns+mountns+uid", (unshare, *namespaces), True, True))
    if unshare and not is_root:
        candidates.append(_Isolation("userns+netns+ipcns+pidns+mountns", (unshare, "--user", "--map-root-user", *namespaces), False, True))
    if is_root:
        candidates.append(_Isolation("uid+rlimits", (), True, False))
    candidates.append(_Isolation("rlimits", (), False, False))
    return candidates


def _works(candidate: _Isolation) -> bool:
    """Namespaces can be compiled in yet forbidden (containers, seccomp): try one real run."""
    probe = "import os, socket\nprint('alive', os.getcwd())"
    try:
        result = _execute(candidate, probe, 20.0, 512, 1, 16, 4096)
    except Exception:
        return False
    return result.ok and result.stdout.startswith("alive") or candidate.name == "rlimits"

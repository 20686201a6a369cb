"""First process inside the sandbox; sandbox.py starts it with `python -I` (under `unshare` when it can).

With a PID namespace it is PID 1: it reaps orphans and, by exiting, makes the kernel kill every
process the program left behind, setsid or not. It keeps its own privileges and runs the program
in a forked child that has dropped them, so the program cannot signal it or anything outside.

With a judge (trusted test code, sandbox.run_python(judge=...)), it first forks the judge: a process
that cannot be traced or have its memory or descriptors opened by anything of the same uid
(PR_SET_DUMPABLE 0), that alone holds the verdict pipe, and that talks to the program over two
pipes. Only then is the program's process forked, after the verdict pipe is closed here, so the
program never holds it; in a user namespace the program moves into a nested one, which takes away
the capabilities (CAP_SYS_PTRACE) it would have over the judge.

argv[1:] is key=value pairs (built in sandbox._execute); not JSON, because importing json (and
with it re) would add a fifth to every run's start-up.
"""
import ctypes
import os
import resource
import signal
import stat
import sys

_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_BIND, _MS_REC = 2, 4, 8, 4096, 16384
_PRIVATE_TMPFS = {"/tmp": "size=256m", "/var/tmp": "size=16m", "/dev/shm": "size=16m", "/run": "size=16m"}
_PR_SET_DUMPABLE, _CLONE_NEWUSER = 4, 0x10000000
_RLIMITS = {
    "cpu": resource.RLIMIT_CPU,
    "as": resource.RLIMIT_AS,
    "fsize": resource.RLIMIT_FSIZE,
    "nproc": resource.RLIMIT_NPROC,
    "core": resource.RLIMIT_CORE,
}


def _mount(source: str, target: str, fstype: str, flags: int, options: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, options.encode()) != 0:
        raise OSError(ctypes.get_errno(), f"mount {fstype} on {target}")


def _hide(hidden: list[str]) -> None:
    """Empties the hidden directories (project tree, homes) and lets the sandbox uid import the stdlib
    when Python lives in a closed or hidden directory (pyenv in /root, a venv in the project).

    Each such directory is covered by an empty tmpfs into which only the interpreter's own
    directories are bind-mounted back, so the rest stays out of reach.
    """
    needed = {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, *sys.path) if p and os.path.isdir(p)}
    covered = sorted({os.path.realpath(p) for p in hidden if p and os.path.isdir(p)})
    covered = [p for p in covered if not any(p.startswith(q + "/") for q in covered if q != p)]
    closed: dict[str, list[str]] = {path: [] for path in covered}
    for path in needed:
        inside = [hidden_path for hidden_path in covered if path == hidden_path or path.startswith(hidden_path + "/")]
        ancestor = inside[0] if inside else _first_closed_ancestor(path)
        if ancestor:
            closed.setdefault(ancestor, []).append(path)
    for ancestor, paths in closed.items():
        paths = [p for p in paths if not any(p.startswith(q + "/") for q in paths if q != p)]
        handles = {path: os.open(path, os.O_PATH | os.O_DIRECTORY) for path in paths}
        _mount("tmpfs", ancestor, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
        for path, handle in handles.items():
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{handle}", path, "", _MS_BIND | _MS_REC, "")
            os.close(handle)


def _first_closed_ancestor(path: str) -> str | None:
    parts = path.strip("/").split("/")
    for depth in range(1, len(parts) + 1):
        ancestor = "/" + "/".join(parts[:depth])
        if not os.stat(ancestor).st_mode & stat.S_IXOTH:
            return ancestor
    return None


def _private_mounts(hidden: list[str]) -> str:
    """Fresh tmpfs over every world-writable directory, and a /proc that shows only this sandbox."""
    _hide(hidden)
    for target, size in _PRIVATE_TMPFS.items():
        if os.path.isdir(target) and not os.path.islink(target):
            _mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, f"{size},mode={755 if target == '/run' else 1777}")
    if os.path.isdir("/run") and not os.path.islink("/run"):
        os.mkdir("/run/lock", 0o777)
        os.chmod("/run/lock", 0o1777)
        os.symlink("/dev/shm", "/run/shm")
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "")
    os.mkdir("/tmp/work", 0o700)
    return "/tmp/work"


def _drop_privileges(config: dict) -> None:
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    for name, value in config["limits"].items():
        resource.setrlimit(_RLIMITS[name], (value, value))
    if config["uid"] is not None:
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])


def _undumpable() -> None:
    """No ptrace, /proc/PID/mem or /proc/PID/fd access to this process without CAP_SYS_PTRACE."""
    if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0)")


def _shed_capabilities() -> None:
    """Root of a user namespace: a nested one (or, failing that, an empty capability set locked against
    regaining root's on exec) leaves the program no capability over the judge; else it does not run."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER) == 0:
        return
    secure_noroot = 0x1 | 0x2 | 0x4 | 0x8  # SECBIT_NOROOT(_LOCKED), SECBIT_NO_SETUID_FIXUP(_LOCKED)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    empty = (ctypes.c_uint32 * 6)()
    if libc.prctl(28, secure_noroot, 0, 0, 0) != 0 or libc.capset(header, empty) != 0:  # PR_SET_SECUREBITS
        os._exit(126)  # fail closed: a program that could trace the judge does not get to run


def _run_judge(config: dict, source: bytes, channel: tuple[int, int]) -> None:
    os.close(config["status_fd"])
    _drop_privileges(config)
    _undumpable()  # after setuid, which would reset it
    namespace = {"__name__": "__judge__", "_VERDICT_FD": config["verdict_fd"],
                 "_REQUEST_FD": channel[1], "_RESPONSE_FD": channel[0]}
    try:
        exec(compile(source, "judge.py", "exec"), namespace)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        os._exit(0)


def _run_program(config: dict, workdir: str, source: bytes, channel: tuple[int, int] | None = None) -> None:
    os.close(config["status_fd"])  # the program must not be able to forge its own verdict
    if channel is not None:
        os.environ["REASONER_RPC"] = f"{channel[0]},{channel[1]}"
        if config["uid"] is None and os.geteuid() == 0:
            _shed_capabilities()
    _drop_privileges(config)
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    with open("main.py", "wb") as file:  # written as the sandbox user, so it is the program's own
        file.write(source)
    sys.argv = ["main.py"]
    main_module = type(sys)("__main__")
    main_module.__file__ = "main.py"
    # The builtins as they are now, for code appended to the program (the grader's harness).
    main_module.__reasoner_builtins__ = dict(vars(sys.modules["builtins"]))
    sys.modules["__main__"] = main_module
    exec(compile(source, "main.py", "exec"), main_module.__dict__)


def _reap_until(child: int, judge: int | None = None) -> int:
    """Waits for the program (and the judge); as PID 1 also reaps whatever else gets orphaned here."""
    waiting, result = {child} | ({judge} if judge else set()), None
    while waiting:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            result = status
        waiting.discard(pid)
    return result


def _parse_arguments(arguments: list[str]) -> dict:
    config = dict(argument.split("=", 1) for argument in arguments)
    config["site_packages"] = config["site_packages"].split(os.pathsep)
    config["limits"] = {name: int(value) for name, value in (item.split(":") for item in config["limits"].split(","))}
    config["uid"] = int(config["uid"]) if config["uid"] else None
    config["private_mounts"] = config["private_mounts"] == "1"
    config["wall_s"] = float(config["wall_s"])
    config["status_fd"] = int(config["status_fd"])
    config["verdict_fd"] = int(config["verdict_fd"])
    config["hide"] = [path for path in config.get("hide", "").split(os.pathsep) if path]
    return config


def main() -> None:
    config = _parse_arguments(sys.argv[1:])
    # Started with -S: .pth processing costs a third of start-up; plain site-packages is all we need.
    sys.path.extend(p for p in config["site_packages"] if p not in sys.path)
    with open(config["program"], "rb") as file:
        source = file.read()
    judge_source = None
    if config.get("judge"):
        with open(config["judge"], "rb") as file:
            judge_source = file.read()
        os.unlink(config["judge"])  # gone before the program starts, whatever the layer
    workdir = _private_mounts(config["hide"]) if config["private_mounts"] else config["workdir"]
    if config["uid"] is not None:
        os.chown(workdir, config["uid"], config["uid"])
    # Our own deadline, so the sandbox ends even if the caller died without killing it.
    signal.signal(signal.SIGALRM, lambda *_: os._exit(137))
    signal.setitimer(signal.ITIMER_REAL, config["wall_s"])
    judge = channel = None
    if judge_source is not None:
        _undumpable()  # the program is our child: without this it could trace us (same uid)
        to_program, from_program = os.pipe(), os.pipe()
        judge = os.fork()
        if judge == 0:
            os.close(to_program[0])
            os.close(from_program[1])
            _run_judge(config, judge_source, (from_program[0], to_program[1]))
        os.close(to_program[1])
        os.close(from_program[0])
        channel = (to_program[0], from_program[1])
    os.close(config["verdict_fd"])  # before the program exists: it never holds the judge's pipe
    child = os.fork()
    if child == 0:
        _run_program(config, workdir, source, channel)
        return
    if channel is not None:
        os.close(channel[0])
        os.close(channel[1])
    status = _reap_until(child, judge)
    os.write(config["status_fd"], str(os.waitstatus_to_exitcode(status)).encode())
    os._exit(0)


if __name__ == "__main__":
    main()

"""First process inside the sandbox; sandbox.py starts it with `python -I` (under `unshare` when it can).

With a PID namespace it is PID 1: it reaps orphans and, by exiting, makes the kernel kill every
process the program left behind, setsid or not. It keeps its own privileges and runs the program
in a forked child that has dropped them, so the program cannot signal it or anything outside.

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
_PRIVATE_TMPFS = {"/tmp": "size=256m", "/var/tmp": "size=16m", "/dev/shm": "size=16m"}
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


def _expose_interpreter() -> None:
    """Lets the sandbox uid import the stdlib when Python lives in a closed home (pyenv in /root).

    The closed directory is covered by an empty tmpfs into which only the interpreter's own
    directories are bind-mounted back, so the rest of that home stays out of reach.
    """
    needed = {p for p in (sys.base_prefix, sys.prefix, *sys.path) if p and os.path.isdir(p)}
    closed: dict[str, list[str]] = {}
    for path in needed:
        ancestor = _first_closed_ancestor(os.path.realpath(path))
        if ancestor:
            closed.setdefault(ancestor, []).append(os.path.realpath(path))
    for ancestor, paths in closed.items():
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


def _private_mounts() -> str:
    """Fresh tmpfs over every world-writable directory, and a /proc that shows only this sandbox."""
    _expose_interpreter()
    for target, size in _PRIVATE_TMPFS.items():
        if os.path.isdir(target):
            _mount("tmpfs", target, "tmpfs", _MS_NOSUID | _MS_NODEV, f"{size},mode=1777")
    _mount("proc", "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "")
    os.mkdir("/tmp/work", 0o700)
    return "/tmp/work"


def _run_program(config: dict, workdir: str, source: bytes) -> None:
    os.close(config["status_fd"])  # the program must not be able to forge its own verdict
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    for name, value in config["limits"].items():
        resource.setrlimit(_RLIMITS[name], (value, value))
    if config["uid"] is not None:
        os.setgroups([])
        os.setgid(config["uid"])
        os.setuid(config["uid"])
    os.chdir(workdir)
    os.environ.update(HOME=workdir, TMPDIR=workdir)
    with open("main.py", "wb") as file:  # written as the sandbox user, so it is the program's own
        file.write(source)
    sys.argv = ["main.py"]
    main_module = type(sys)("__main__")
    main_module.__file__ = "main.py"
    sys.modules["__main__"] = main_module
    exec(compile(source, "main.py", "exec"), main_module.__dict__)


def _reap_until(child: int) -> int:
    """Waits for the program; as PID 1 also reaps whatever else gets orphaned here."""
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            return status


def _parse_arguments(arguments: list[str]) -> dict:
    config = dict(argument.split("=", 1) for argument in arguments)
    config["site_packages"] = config["site_packages"].split(os.pathsep)
    config["limits"] = {name: int(value) for name, value in (item.split(":") for item in config["limits"].split(","))}
    config["uid"] = int(config["uid"]) if config["uid"] else None
    config["private_mounts"] = config["private_mounts"] == "1"
    config["wall_s"] = float(config["wall_s"])
    config["status_fd"] = int(config["status_fd"])
    return config


def main() -> None:
    config = _parse_arguments(sys.argv[1:])
    # Started with -S: .pth processing costs a third of start-up; plain site-packages is all we need.
    sys.path.extend(p for p in config["site_packages"] if p not in sys.path)
    with open(config["program"], "rb") as file:
        source = file.read()
    workdir = _private_mounts() if config["private_mounts"] else config["workdir"]
    if config["uid"] is not None:
        os.chown(workdir, config["uid"], config["uid"])
    # Our own deadline, so the sandbox ends even if the caller died without killing it.
    signal.signal(signal.SIGALRM, lambda *_: os._exit(137))
    signal.setitimer(signal.ITIMER_REAL, config["wall_s"])
    child = os.fork()
    if child == 0:
        _run_program(config, workdir, source)
        return
    status = _reap_until(child)
    os.write(config["status_fd"], str(os.waitstatus_to_exitcode(status)).encode())
    os._exit(0)


if __name__ == "__main__":
    main()

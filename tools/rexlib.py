"""The one small library of rollout-exporter's Python tooling (tests/kit, tests/deploy, bench,
dashboards): standard library only, Python 3.11, importable without installing. Entry points put
this directory on sys.path:

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[N] / "tools"))
    import rexlib

Report protocol (the same for every stage): one line per check,

    ok <name>[ (note)]
    FAIL <name>: <reason>          (further lines of the reason indented by four spaces)
    SKIP <name>: <why>

and, last, exactly one closing line `<stage>: N passed, N failed` (`, N skipped` appended when
something was skipped); the exit status is 1 when anything failed. Lines starting with `#` are
comments. With CI=true a missing tool is a FAIL, never a SKIP; without it, a SKIP with the reason.

Every process started here runs in its own process group (start_new_session=True) and its group is
killed when it is stopped and at exit; nothing is ever killed by name. Every wait is "until a
condition holds, or fail after a deadline".
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

REPO = pathlib.Path(__file__).resolve().parents[1]
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# Keep the temp dirs and process logs of a run (for debugging a failure).
KEEP = os.environ.get("REX_KEEP", os.environ.get("KIT_VERBOSE", "")) not in ("", "0")


# ---------------------------------------------------------------- outcomes and the report


class Fail(Exception):
    """A check (or a step) failed; the message says why."""


class Skip(Exception):
    """A check cannot run here (outside CI); the message says why."""


class WaitTimeout(Fail, TimeoutError):
    """A wait_until deadline passed (both a Fail and a TimeoutError)."""


class Interrupted(Fail):
    """SIGTERM or SIGINT arrived (see on_signals_raise)."""


class Report:
    """One stage's report: ok / FAIL / SKIP lines, then the closing line."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.passed = 0
        self.failed = 0
        self.skipped = 0

    @staticmethod
    def _emit(line: str) -> None:
        print(line, flush=True)

    @staticmethod
    def _one_line(name: str) -> str:
        return " ".join(str(name).split())

    def ok(self, name: str, note: str = "") -> None:
        self.passed += 1
        self._emit(f"ok {self._one_line(name)}" + (f" ({note})" if note else ""))

    def fail(self, name: str, reason: str) -> None:
        self.failed += 1
        lines = str(reason).rstrip().splitlines() or ["failed"]
        self._emit(f"FAIL {self._one_line(name)}: {lines[0]}")
        for line in lines[1:80]:
            self._emit(f"    {line}")
        if len(lines) > 80:
            self._emit(f"    ... ({len(lines) - 80} more lines)")

    def skip(self, name: str, why: str) -> None:
        self.skipped += 1
        self._emit(f"SKIP {self._one_line(name)}: {self._one_line(why)}")

    def comment(self, text: str) -> None:
        self._emit(f"# {text}")

    def check(self, cond: Any, name: str, detail: str = "") -> bool:
        """ok when cond holds, else FAIL with detail (or a generic reason)."""
        if cond:
            self.ok(name)
        else:
            self.fail(name, detail or "the assertion does not hold")
        return bool(cond)

    def run(self, name: str, fn: Callable[[], Any]) -> bool:
        """Run one check: its return value (a string) is the ok note; Skip, Fail or any other
        exception become SKIP / FAIL. Interrupted propagates after its FAIL line."""
        try:
            note = fn()
        except Skip as s:
            self.skip(name, str(s))
            return True
        except Interrupted as e:
            self.fail(name, str(e))
            raise
        except Fail as f:
            self.fail(name, str(f))
            return False
        except Exception:  # noqa: BLE001 - a crashing check is a failing check
            self.fail(name, "crashed\n" + traceback.format_exc())
            return False
        self.ok(name, note if isinstance(note, str) else "")
        return True

    def tool(self, name: str, package: str) -> str | None:
        """Path of a required tool. Missing: FAIL under CI=true, SKIP (with the reason) otherwise;
        the caller skips what needs it."""
        path = shutil.which(name)
        if path:
            return path
        if CI:
            self.fail(f"tool {name}", f"not installed (Debian package {package}); CI=true makes a missing tool a failure")
        else:
            self.skip(f"tool {name}", f"not installed (Debian package {package}): the checks that need it do not run")
        return None

    def closing_line(self) -> str:
        line = f"{self.stage}: {self.passed} passed, {self.failed} failed"
        return line + (f", {self.skipped} skipped" if self.skipped else "")

    def close(self) -> int:
        """Print the closing line; the exit status (1 when anything failed)."""
        self._emit(self.closing_line())
        return 1 if self.failed else 0


def need_tool(name: str, package: str) -> str:
    """Path of a tool a check needs; raises Fail under CI=true, Skip otherwise."""
    path = shutil.which(name)
    if path:
        return path
    msg = f"{name} not found (Debian package {package})"
    if CI:
        raise Fail(msg + "; required under CI=true")
    raise Skip(msg)


def standalone(stage: str, main: Callable[[Report], None]) -> int:
    """Run one check module on its own (`python3 check_x.py`): its report and closing line."""
    r = Report(stage)
    on_signals_raise()
    _run_body(r, stage, main)
    return r.close()


def _run_body(r: Report, name: str, main: Callable[[Report], None]) -> None:
    try:
        main(r)
    except Interrupted as e:
        r.fail(f"{name} ran to the end", str(e))
    except Exception:  # noqa: BLE001 - a crash is a failure, reported
        r.fail(f"{name} ran to the end", "crashed\n" + traceback.format_exc())


def run_sections(stage: str, sections: Sequence[tuple[str, Callable[[Report], None]]],
                 limit_s: float) -> int:
    """Run several check modules in this process under one report, each with a time limit."""
    r = Report(stage)
    on_signals_raise()
    for name, main in sections:
        r.comment(name)
        try:
            with time_limit(limit_s, name):
                _run_body(r, name, main)
        except Interrupted as e:
            r.fail(f"{name} ran to the end", str(e))
        if INTERRUPTED:
            break
    return r.close()


# ---------------------------------------------------------------- signals and time limits


INTERRUPTED = False


def on_signals_raise() -> None:
    """SIGTERM / SIGINT raise Interrupted, so that every finally (and atexit) stops what was started."""
    def handler(signum: int, _frame: Any) -> None:
        global INTERRUPTED
        INTERRUPTED = True
        raise Interrupted(f"signal {signal.Signals(signum).name}")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise Fail in the block when it runs longer than `seconds` (SIGALRM; main thread only)."""
    def handler(_signum: int, _frame: Any) -> None:
        raise Fail(f"{what} timed out after {seconds:.0f}s")
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# ---------------------------------------------------------------- waiting


WAIT_IGNORES: tuple[type[BaseException], ...] = (OSError, http.client.HTTPException, ValueError, KeyError)


def wait_until(what: str, fn: Callable[[], T], deadline_s: float, interval_s: float = 0.25,
               ignore: tuple[type[BaseException], ...] = WAIT_IGNORES) -> T:
    """Poll fn() until it returns a truthy value and return it. Exceptions in `ignore` mean "not
    yet"; any other propagates (e.g. a Fail when a watched process exited). After the deadline,
    raise WaitTimeout naming `what` (and the last ignored error)."""
    end = time.monotonic() + deadline_s
    last: BaseException | None = None
    while True:
        try:
            v = fn()
            if v:
                return v
        except ignore as e:
            last = e
        if time.monotonic() >= end:
            raise WaitTimeout(f"timed out after {deadline_s:g}s waiting for {what}"
                              + (f" (last error: {last})" if last else ""))
        time.sleep(interval_s)


# ---------------------------------------------------------------- ports, temp dirs, commands


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def temp_dir(prefix: str) -> pathlib.Path:
    """A fresh temp dir, removed at exit (kept with REX_KEEP=1 / KIT_VERBOSE=1)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix=prefix))

    def cleanup() -> None:
        if KEEP:
            print(f"# kept {d}", flush=True)
        else:
            shutil.rmtree(d, ignore_errors=True)
    atexit.register(cleanup)
    return d


def run(cmd: Sequence[Any], timeout: float = 120, check: bool = False, **kw: Any) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text output captured; check=True raises Fail on a non-zero exit."""
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    argv = [str(c) for c in cmd]
    r = subprocess.run(argv, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise Fail(f"{' '.join(argv[:6])}... exited {r.returncode}: {(r.stderr or '').strip()[-800:]}")
    return r


class Processes:
    """Children in their own process groups; each group is killed on stop, stop_all and at exit.
    With a pidfile, the live groups' ids are written there (one a line) for an outer cleanup."""

    def __init__(self, prefix: str = "rex-", pidfile: pathlib.Path | None = None,
                 tmp: pathlib.Path | None = None) -> None:
        self.tmp = tmp or temp_dir(prefix)
        self.pidfile = pidfile
        self.procs: list[tuple[str, subprocess.Popen[bytes], pathlib.Path]] = []
        atexit.register(self.stop_all)

    def _write_pids(self) -> None:
        if self.pidfile is not None:
            self.pidfile.write_text("".join(f"{p.pid}\n" for _n, p, _l in self.procs if p.poll() is None))

    def start(self, name: str, cmd: Sequence[Any], log: pathlib.Path | None = None,
              env: dict[str, str] | None = None, cwd: pathlib.Path | None = None) -> subprocess.Popen[bytes]:
        """Start cmd with stdout+stderr appended to `log` (default <tmp>/<name>.log)."""
        log = log or self.tmp / f"{name}.log"
        with open(log, "ab") as fh:
            p = subprocess.Popen([str(c) for c in cmd], stdout=fh, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        self.procs.append((name, p, log))
        self._write_pids()
        return p

    def log_of(self, name_or_proc: str | subprocess.Popen[bytes]) -> pathlib.Path | None:
        for n, p, log in reversed(self.procs):
            if n == name_or_proc or p is name_or_proc:
                return log
        return None

    def log_tail(self, name_or_proc: str | subprocess.Popen[bytes], lines: int = 30) -> str:
        log = self.log_of(name_or_proc)
        if log is None or not log.exists():
            return ""
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, name_or_proc: str | subprocess.Popen[bytes], grace_s: float = 10) -> None:
        for n, p, _log in list(self.procs):
            if n == name_or_proc or p is name_or_proc:
                kill_group(p, grace_s)
                self.procs = [x for x in self.procs if x[1] is not p]
        self._write_pids()

    def stop_all(self) -> None:
        for _n, p, _log in reversed(self.procs):
            kill_group(p, 5)
        self.procs = []
        self._write_pids()


def kill_group(p: subprocess.Popen[Any], grace_s: float = 10) -> None:
    """SIGTERM the process group p leads (p was started with start_new_session=True), SIGKILL it
    after grace_s, and reap p."""
    if p.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)  # leftovers of the group, if any
        return
    try:
        os.killpg(p.pid, signal.SIGTERM)
    except ProcessLookupError:
        p.wait(5)
        return
    try:
        p.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=5)


# ---------------------------------------------------------------- HTTP and Prometheus


def http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    """(status, body); an HTTP error status is returned, a connection error raised (OSError)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return int(r.status), r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return int(e.code), e.read().decode("utf-8", "replace")


def http_ok(url: str, timeout: float = 2) -> bool:
    """True when GET url answers 2xx; False on any error."""
    try:
        return 200 <= http_get(url, timeout)[0] < 300
    except (OSError, http.client.HTTPException):
        return False


def http_json(url: str, data: bytes | None = None, timeout: float = 5, method: str | None = None) -> Any:
    """The JSON body of a request (POST when data is given); HTTP errors raise."""
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


def prom_query(base: str, expr: str, timeout: float = 10) -> dict[str, Any]:
    """The whole /api/v1/query response of an instant query on a Prometheus at base."""
    return http_json(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}), timeout=timeout)


def prom_result(base: str, expr: str, timeout: float = 10) -> list[dict[str, Any]]:
    """data.result of an instant query."""
    return prom_query(base, expr, timeout)["data"]["result"]


def prom_wait(base: str, expr: str, what: str, deadline_s: float,
              pred: Callable[[list[dict[str, Any]]], bool] = bool, interval_s: float = 0.5) -> list[dict[str, Any]]:
    """Wait until pred(data.result of expr) holds; return that result."""
    def probe() -> list[dict[str, Any]] | None:
        res = prom_result(base, expr)
        return res if pred(res) else None
    return wait_until(what, probe, deadline_s, interval_s)

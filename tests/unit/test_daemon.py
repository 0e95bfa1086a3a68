"""xentoold and the thin client, on the host: a daemon on a private socket runs a fake verb
table, and every command is compared with the same verbs run in-process."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from xentool import __version__, client, state

ROOT = Path(__file__).resolve().parents[2]

# The fake verb table: each verb shows one thing the child must have taken from the client.
VERBS = textwrap.dedent("""
    import os, signal, sys, time

    def run(args):
        verb = args[0] if args else ""
        if verb == "echo":
            print(" ".join(args[1:]))
            print("to stderr", file=sys.stderr)
            return int(os.environ.get("FAKE_CODE", "0"))
        if verb == "env":
            print(os.environ.get(args[1], "<unset>"))
            return 0
        if verb == "cwd":
            print(os.getcwd())
            print(oct(os.umask(0)))
            return 0
        if verb == "argv":
            print(os.path.basename(sys.argv[0]), sys.argv[1:], sys.executable)
            return 0
        if verb == "stdin":
            print(sys.stdin.read().upper(), end="")
            return 0
        if verb == "exit":
            sys.exit(args[1] if not args[1].isdigit() else int(args[1]))
        if verb == "crash":
            raise RuntimeError("a bug")
        if verb == "kill":
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        if verb == "wait":  # until a signal: SIGINT is KeyboardInterrupt, the others logged
            def on(signo, frame):
                raise SystemExit(f"got {signal.Signals(signo).name}")
            for s in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(s) != signal.SIG_IGN:
                    signal.signal(s, on)
            marker = os.environ.get("FAKE_MARKER")
            try:
                print("waiting", flush=True)
                time.sleep(float(os.environ.get("FAKE_WAIT", "60")))
            except KeyboardInterrupt:
                print("interrupted", file=sys.stderr)
                return 130
            except SystemExit as e:
                if marker:
                    with open(marker, "w") as f:
                        f.write(str(e.code))
                raise
            return 0
        if verb == "parent":
            print(os.getppid())
            return 0
        if verb == "pid":
            print(os.getpid())
            return 0
        print(f"unknown verb {verb!r}", file=sys.stderr)
        return 2
    """)

DAEMON = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    import fake_verbs
    from xentool import daemon
    daemon.serve(fake_verbs.run, path=sys.argv[2], foreground=True,
                 allow_uid=int(sys.argv[3]))
    """)

# The client: forwarded if a daemon takes it, else the same fake verbs in-process.
CLIENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv.pop(1))
    from xentool import client
    code = client.forward(sys.argv[1:])
    if code is None:
        import fake_verbs
        print("[in-process]", file=sys.stderr)
        code = fake_verbs.run(sys.argv[1:])
    sys.exit(code)
    """)


class Daemon:
    def __init__(self, tmp: Path, allow_uid: int = 0) -> None:
        self.dir = tmp
        self.sock = str(tmp / "run" / "xentoold.sock")
        (tmp / "fake_verbs.py").write_text(VERBS)
        (tmp / "client.py").write_text(CLIENT)
        self.log = open(tmp / "daemon.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", DAEMON, str(tmp), self.sock, str(allow_uid)],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, "daemon did not listen"
            time.sleep(0.02)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("XENTOOL_")}
        env["XENTOOL_DAEMON_SOCKET"] = self.sock
        env["PYTHONPATH"] = str(ROOT)
        return {**env, **extra}

    def popen(self, *args: str, in_process: bool = False,
              extra_env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
        env = self.env(**({"XENTOOL_NO_DAEMON": "1"} if in_process else {}))
        env.update(extra_env or {})
        proc: subprocess.Popen[str] = subprocess.Popen(
            [sys.executable, str(self.dir / "client.py"), str(self.dir), *args], env=env,
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
        return proc

    def run(self, *args: str, in_process: bool = False, input: str | None = None,
            **kw: Any) -> tuple[int, str, str]:
        proc = self.popen(*args, in_process=in_process, stdin=subprocess.PIPE, **kw)
        out, err = proc.communicate(input, timeout=30)
        return proc.returncode, out, err


@pytest.fixture
def xd(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path)
    try:
        yield d
    finally:
        d.stop()


def both(xd: Daemon, *args: str, **kw: object) -> tuple[int, str, str]:
    """Run through the daemon and in-process: the same result, which is returned."""
    via = xd.run(*args, **kw)  # type: ignore[arg-type]
    here = xd.run(*args, in_process=True, **kw)  # type: ignore[arg-type]
    assert "[in-process]" not in via[2], via
    assert here[2].startswith("[in-process]\n"), here
    assert via == (here[0], here[1], here[2].removeprefix("[in-process]\n"))
    return via


def test_output_and_exit_status_are_the_in_process_ones(xd: Daemon) -> None:
    assert both(xd, "echo", "a", "b") == (0, "a b\n", "to stderr\n")
    assert both(xd, "echo", "x", extra_env={"FAKE_CODE": "3"})[0] == 3
    assert both(xd, "nope") == (2, "", "unknown verb 'nope'\n")
    assert both(xd, "exit", "7")[0] == 7
    assert both(xd, "exit", "bye") == (1, "", "bye\n")
    # A bug's traceback: the same but for the outer frames (the daemon's, the script's).
    for in_process in (False, True):
        code, _, err = xd.run("crash", in_process=in_process)
        assert code == 1 and err.endswith('raise RuntimeError("a bug")\nRuntimeError: a bug\n')


def test_the_child_has_the_clients_env_cwd_umask_argv_and_stdin(xd: Daemon,
                                                                 tmp_path: Path) -> None:
    sub = tmp_path / "here"
    sub.mkdir()
    assert both(xd, "env", "XENTOOL_FAULT_INJECT",
                extra_env={"XENTOOL_FAULT_INJECT": "create:3"})[1] == "create:3\n"
    assert both(xd, "env", "HOME", extra_env={"HOME": "/nowhere"})[1] == "/nowhere\n"
    assert both(xd, "env", "PATH", extra_env={"PATH": "/only"})[1] == "/only\n"
    old = os.umask(0o027)
    try:
        assert both(xd, "cwd", cwd=sub)[1] == f"{sub}\n0o27\n"
    finally:
        os.umask(old)
    assert both(xd, "argv", "x")[1] == f"client.py ['argv', 'x'] {sys.executable}\n"
    assert both(xd, "stdin", input="hello\nworld\n")[1] == "HELLO\nWORLD\n"


def test_the_command_runs_in_a_child_of_the_daemon(xd: Daemon) -> None:
    assert xd.run("parent")[1] == f"{xd.proc.pid}\n"


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _spare(xd: Daemon) -> int:
    deadline = time.monotonic() + 10
    while len(children := _children(xd.proc.pid)) != 1:
        assert time.monotonic() < deadline, children
        time.sleep(0.02)
    return children[0]


def test_a_spare_child_forked_ahead_runs_the_next_command(xd: Daemon) -> None:
    for _ in range(3):
        spare = _spare(xd)
        assert xd.run("pid") == (0, f"{spare}\n", "")
    os.kill(_spare(xd), signal.SIGKILL)  # a spare that dies: the next command forks
    assert xd.run("echo", "still")[:2] == (0, "still\n")


def _wait_for(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline() == line


@pytest.mark.parametrize("signo, code, err", [
    (signal.SIGINT, 130, "interrupted\n"),
    (signal.SIGTERM, 1, "got SIGTERM\n"),
    (signal.SIGHUP, 1, "got SIGHUP\n"),
])
def test_signals_reach_the_command(xd: Daemon, signo: int, code: int, err: str) -> None:
    for in_process in (False, True):
        proc = xd.popen("wait", in_process=in_process)
        _wait_for(proc, "waiting\n")
        proc.send_signal(signo)
        _out, stderr = proc.communicate(timeout=30)
        assert (proc.returncode, stderr.removeprefix("[in-process]\n")) == (code, err)


def test_a_signal_the_client_ignores_is_ignored_by_the_command(xd: Daemon) -> None:
    proc = xd.popen("wait", extra_env={"FAKE_WAIT": "1"},
                    preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    _wait_for(proc, "waiting\n")
    proc.send_signal(signal.SIGHUP)  # the client ignores it: nothing is forwarded
    assert proc.communicate(timeout=30) == ("", "") and proc.returncode == 0


def test_a_client_that_vanishes_hangs_the_command_up(xd: Daemon, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    proc = xd.popen("wait", extra_env={"FAKE_MARKER": str(marker)})
    _wait_for(proc, "waiting\n")
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    while not marker.exists():
        assert time.monotonic() < deadline, "the command got no SIGHUP"
        time.sleep(0.02)
    assert marker.read_text() == "got SIGHUP"


def test_a_command_killed_by_a_signal_kills_the_client_alike(xd: Daemon) -> None:
    assert xd.run("kill")[0] == xd.run("kill", in_process=True)[0] == -signal.SIGKILL


def test_no_daemon_means_in_process(tmp_path: Path) -> None:
    nowhere = str(tmp_path / "none.sock")
    assert client.forward(["list"], nowhere) is None  # ENOENT
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "stale.sock"))  # a file nobody listens on: ECONNREFUSED
    stale.close()
    assert client.forward(["list"], str(tmp_path / "stale.sock")) is None


def test_no_daemon_env_and_service_verbs_stay_in_process(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    served: list[socket.socket] = []
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    listener.settimeout(0.2)
    try:
        monkeypatch.setenv("XENTOOL_NO_DAEMON", "1")
        assert client.forward(["list"], path) is None
        monkeypatch.delenv("XENTOOL_NO_DAEMON")
        for argv in (["monitor"], ["-v", "mon", "--once"], ["sched-controller", "-f", "x"],
                     ["daemon", "--foreground"]):
            assert client.forward(argv, path) is None
        with pytest.raises(TimeoutError):
            served.append(listener.accept()[0])  # nobody even connected
    finally:
        listener.close()
    assert client._local_verb(["-v", "list"]) is False
    assert client._local_verb(["--", "monitor"]) is False


def _fake_daemon(path: str, hello: dict[str, object], got: list[dict[str, object]]) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.sendall(client.encode(hello))
            conn.settimeout(2)
            try:
                got.append(client.recv(conn))
            except (OSError, client.ProtocolError):
                pass

    threading.Thread(target=serve, daemon=True).start()


def test_a_daemon_of_another_version_is_not_used(tmp_path: Path) -> None:
    got: list[dict[str, object]] = []
    path = str(tmp_path / "s.sock")
    _fake_daemon(path, {"v": client.PROTOCOL + 1, "op": "hello", "pid": 1}, got)
    assert client.forward(["echo"], path) is None
    time.sleep(0.1)
    assert got == []  # not even asked


def test_a_request_of_another_version_is_refused(xd: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(xd.sock)
        assert client.recv(s)["op"] == "hello"
        client.send(s, {"v": 99, "op": "run", "argv": ["x", "echo"]}, [0, 1, 2, 0])
        reply = client.recv(s)
    assert reply["op"] == "refused" and "version 99" in str(reply["reason"])


def test_a_request_without_its_descriptors_is_refused(xd: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(xd.sock)
        client.recv(s)
        client.send(s, {"v": client.PROTOCOL, "op": "run", "argv": ["x", "echo"]})
        reply = client.recv(s)
    assert reply["op"] == "refused" and "4 file descriptors" in str(reply["reason"])


def test_only_the_allowed_uid_may_connect(tmp_path: Path) -> None:
    xd = Daemon(tmp_path, allow_uid=os.getuid() + 1)  # we are not whom it lets in
    try:
        code, out, err = xd.run("echo", "hi")
        assert (code, out, err) == (0, "hi\n", "[in-process]\nto stderr\n")
    finally:
        xd.stop()


def test_socket_is_private_and_one_daemon_per_socket(xd: Daemon) -> None:
    st = os.stat(xd.sock)
    assert oct(st.st_mode & 0o777) == "0o600"
    assert oct(os.stat(os.path.dirname(xd.sock)).st_mode & 0o777) == "0o700"
    assert (Path(xd.sock).with_suffix(".pid")).read_text() == f"{xd.proc.pid}\n"
    r = subprocess.run([sys.executable, "-c", DAEMON, str(xd.dir), xd.sock, "0"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1
    assert f"xentoold already runs on {xd.sock} (pid {xd.proc.pid})" in r.stderr


def test_stop_waits_for_the_commands_in_flight(xd: Daemon) -> None:
    proc = xd.popen("wait", extra_env={"FAKE_WAIT": "1"})
    _wait_for(proc, "waiting\n")
    xd.proc.send_signal(signal.SIGTERM)
    assert proc.communicate(timeout=30) == ("", "") and proc.returncode == 0
    assert xd.proc.wait(10) == 0
    assert not os.path.exists(xd.sock)
    assert xd.run("echo")[2].startswith("[in-process]")


def test_socket_activation(tmp_path: Path) -> None:
    (tmp_path / "fake_verbs.py").write_text(VERBS)
    (tmp_path / "client.py").write_text(CLIENT)
    path = str(tmp_path / "act.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()
    fd = listener.fileno()
    # As systemd: the socket is fd 3, LISTEN_PID the daemon's pid.
    shim = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
            "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
            "os.execv(sys.executable, [sys.executable, '-c', *sys.argv[2:]])")
    proc = subprocess.Popen([sys.executable, "-c", shim, str(fd), DAEMON, str(tmp_path),
                             str(tmp_path / "other.sock"), "0"], pass_fds=[fd], cwd=ROOT)
    listener.close()
    try:
        env = {**os.environ, "XENTOOL_DAEMON_SOCKET": path, "PYTHONPATH": str(ROOT)}
        r = subprocess.run([sys.executable, str(tmp_path / "client.py"), str(tmp_path),
                            "echo", "activated"], env=env, capture_output=True, text=True,
                           timeout=60)
        assert (r.returncode, r.stdout, r.stderr) == (0, "activated\n", "to stderr\n")
        assert not os.path.exists(tmp_path / "other.sock")  # served the inherited one
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
    assert os.path.exists(path)  # systemd's file: left alone


def test_the_real_cli_through_a_background_daemon(tmp_path: Path) -> None:
    sock = str(tmp_path / "d" / "xentoold.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("XENTOOL_")}
    env.update(XENTOOL_DAEMON_SOCKET=sock, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "xentool", "daemon", "--socket", sock],
                       env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    pid = int(Path(sock).with_suffix(".pid").read_text())
    try:
        for argv in (["--version"], ["help", "list"], ["frobnicate"], ["list", "--bogus"]):
            via = subprocess.run([sys.executable, "-m", "xentool", *argv], env=env,
                                 capture_output=True, text=True, timeout=60)
            here = subprocess.run([sys.executable, "-m", "xentool", *argv],
                                  env={**env, "XENTOOL_NO_DAEMON": "1"}, capture_output=True,
                                  text=True, timeout=60)
            assert (via.returncode, via.stdout, via.stderr) == \
                (here.returncode, here.stdout, here.stderr), argv
        assert via.returncode == 2
    finally:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while os.path.exists(sock):
        assert time.monotonic() < deadline
        time.sleep(0.05)


# -- the wire format and the client's start-up cost -------------------------------------------


@pytest.mark.parametrize("message", [
    {"v": 1, "op": "run", "argv": ["xentool", "list", "-l"], "umask": 18,
     "env": {"A": "b c", "Q": "\"'\\\n\t", "U": "ünï", "S": "\udcff\udc80", "E": ""},
     "ignored": [], "stdio": [["utf-8", "strict"], None], "x": None, "t": True},
])
def test_messages_are_the_json_of_json_dumps(message: dict[str, object]) -> None:
    data = client.encode(message)
    assert data[4:] == json.dumps(message, separators=(",", ":")).encode()
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert client.decode(data[4:]) == message


@pytest.mark.parametrize("body", [b"", b"[1]", b"{", b'{"a":1} x', b"\xff", b"NaN"])
def test_garbage_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(client.ProtocolError):
        client.decode(body)


def test_socket_path_follows_the_run_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    assert (client.RUN_DIR, client.RUN_DIR_ENV) == (state.RUN_DIR, state.RUN_DIR_ENV)
    monkeypatch.delenv("XENTOOL_DAEMON_SOCKET", raising=False)
    monkeypatch.delenv("XENTOOL_RUN_DIR", raising=False)
    assert client.socket_path() == "/run/xentool/xentoold.sock"
    monkeypatch.setenv("XENTOOL_RUN_DIR", "/tmp/r")
    assert client.socket_path() == "/tmp/r/xentoold.sock"
    monkeypatch.setenv("XENTOOL_DAEMON_SOCKET", "/tmp/x.sock")
    assert client.socket_path() == "/tmp/x.sock"


#: What the forwarding path must not import: the library, and the costly stdlib modules
#: (socket, signal and json import enum, selectors and re).
NOT_ON_FORWARDING_PATH = {"dataclasses", "argparse", "cffi", "pyxs", "typing", "logging",
                          "socket", "signal", "json", "re", "enum", "selectors", "array",
                          "struct", "collections"}


def test_the_client_imports_almost_nothing() -> None:
    # -S: as the installed entry point starts; the client must not need site either.
    script = textwrap.dedent("""
        import sys
        before = set(sys.modules)
        import xentool.client
        print("\\n".join(sorted(set(sys.modules) - before)))
        """)
    r = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    new = set(r.stdout.split())
    assert "xentool.client" in new
    assert {m for m in new if m.startswith("xentool")} <= {"xentool", "xentool.client"}
    assert not new & NOT_ON_FORWARDING_PATH, new & NOT_ON_FORWARDING_PATH
    assert not {m for m in new if m.startswith(("domain_builder", "xenstore"))}


def test_preload_imports_the_verbs() -> None:
    r = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import sys
        import dataclasses, logging
        logging.basicConfig(level=logging.DEBUG)
        from xentool import daemon
        failed = daemon.preload()
        from domain_builder import xenctrl
        from xentool.config import disk, grammar
        assert grammar._GRAMMAR is not None
        assert disk._first_char_index.cache_info().currsize == 1
        assert all(dataclasses.is_dataclass(getattr(xenctrl, n)) for n in xenctrl._DEFERRED)
        print(" ".join(sorted(sys.modules)))
        print(" ".join(failed) or "-")
        """)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "preload()" not in r.stderr  # every module's preload() ran without an error
    modules, failed = r.stdout.splitlines()
    assert set(failed.split()) <= {"-", "domain_builder._xenctrl"}  # no binding on this host
    loaded = set(modules.split())
    assert {"xentool.cli.commands.create", "xentool.cli.commands.query", "xentool.create",
            "xenstore.client", "xentool.config.grammar"} <= loaded
    assert "xentool.__main__" not in loaded and "domain_builder._build_xenctrl" not in loaded


def test_daemon_verb_is_in_the_table() -> None:
    from xentool.cli import _BY_NAME
    from xentool.cli.commands.daemon import xentoold

    assert _BY_NAME["daemon"].module == "daemon"
    with pytest.raises(SystemExit) as e:
        xentoold(["--help"])
    assert e.value.code == 0


def test_the_installed_script_imports_only_the_client() -> None:
    launcher = ROOT / "bin/xentool"
    tree = ast.parse(launcher.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                 if n.module is not None}
    # os to find the package, site only where the package is not found without it.
    assert imported == {"sys", "os", "site", "xentool.client"}
    # Isolated and without site, as the kernel starts it (setuptools keeps the flags when
    # it rewrites the interpreter).
    assert launcher.read_text().splitlines()[0] == "#!/usr/bin/python3 -IS"
    for flags in (["-I", "-S"], []):
        r = subprocess.run([sys.executable, *flags, str(launcher), "--version"],
                           capture_output=True, text=True, timeout=60, cwd="/",
                           env={**os.environ, "PYTHONPATH": str(ROOT), "XENTOOL_NO_DAEMON": "1"})
        assert (r.returncode, r.stdout, r.stderr) == (0, f"xentool {__version__}\n", ""), flags


def test_the_launcher_forwards_without_site_and_gives_the_same_bytes(tmp_path: Path) -> None:
    """Through a daemon and in-process, the launcher started as installed (-I -S) and as a
    plain script give the same output and exit status; forwarding, it imports neither
    site nor anything the client leaves out."""
    launcher = str(ROOT / "bin/xentool")
    sock = str(tmp_path / "d" / "xentoold.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XENTOOL_", "PYTHON"))}
    env.update(XENTOOL_DAEMON_SOCKET=sock)
    r = subprocess.run([sys.executable, launcher, "daemon", "--socket", sock, "--no-monitor",
                        "--no-sched"], env=env, capture_output=True, text=True, timeout=120,
                       cwd=ROOT)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    pid = int(Path(sock).with_suffix(".pid").read_text())
    try:
        for argv in (["--version"], ["help", "list"], ["frobnicate"], ["list", "--bogus"],
                     ["help"]):
            seen = set()
            for mode in ({}, {"XENTOOL_NO_DAEMON": "1"}):
                for flags in (["-I", "-S"], []):
                    p = subprocess.run([sys.executable, *flags, launcher, *argv],
                                       env={**env, **mode}, capture_output=True, timeout=60,
                                       cwd=tmp_path)
                    seen.add((p.returncode, p.stdout, p.stderr))
            assert len(seen) == 1, (argv, seen)
            assert argv != ["frobnicate"] or seen.pop()[0] == 2
        code = ("import runpy, sys; sys.argv = [sys.argv[1], '--version']\n"
                "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
                "except SystemExit:\n    pass\n"
                "sys.stderr.write(' '.join(sorted(sys.modules)))\n")
        # As the kernel starts it, but with runpy to see what it imported: runpy's own
        # modules aside, no site and nothing the forwarding path leaves out.
        p = subprocess.run([sys.executable, "-I", "-S", "-c", code, launcher], env=env,
                           capture_output=True, text=True, timeout=60)
        assert p.stdout == f"xentool {__version__}\n", p.stderr
        loaded = set(p.stderr.split())
        assert "xentool.client" in loaded and "site" not in loaded, loaded
        assert not {m for m in loaded if m == "xentool.cli" or m.startswith((
            "xentool.cli.", "domain_builder", "xenstore", "cffi", "pyxs", "logging",
            "argparse"))}, loaded
    finally:
        os.kill(pid, signal.SIGTERM)

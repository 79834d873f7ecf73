"""harness.stack (the local stack behind scripts/stack): settings from the environment,
service selection, the command lines and process recognition of each service, `logs`, and
a real `up`/`status`/`logs`/`down` of the simulator and the SMTP sink in a private stack
dir on free ports. Kafka and the registry are started for real only by the integration
suite (their commands are checked here); the shared stack is never touched."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.settings import PROJECT_ROOT
from harness.stack import cli, common, config
from harness.stack.config import Settings, StackError
from harness.stack.kafka import Kafka
from harness.stack.registry import Registry
from harness.stack.simulator import Simulator
from harness.stack.smtp_sink import SmtpSink
from harness.workers import free_port

PORT_VARS = {
    "SPILLWAY_STACK_KAFKA_PORT": "kafka_port",
    "SPILLWAY_STACK_KAFKA_CONTROLLER_PORT": "controller_port",
    "SPILLWAY_STACK_REGISTRY_PORT": "registry_port",
    "SPILLWAY_STACK_REGISTRY_MGMT_PORT": "registry_mgmt_port",
    "SPILLWAY_STACK_SIM_PORT": "sim_port",
    "SPILLWAY_STACK_SMTP_PORT": "smtp_port",
    "SPILLWAY_STACK_SMTP_HTTP_PORT": "smtp_http_port",
}


@pytest.fixture
def private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A stack dir of its own and free ports for every service (never the shared stack)."""
    monkeypatch.setenv("SPILLWAY_STACK_DIR", str(tmp_path / "stack"))
    for var in PORT_VARS:
        monkeypatch.setenv(var, str(free_port()))
    settings = Settings.from_env()
    yield settings
    # whatever a failed test left running in this dir: stopped by its own pid files only
    cli.main(["down"])


def test_settings_from_the_environment(private: Settings, tmp_path: Path) -> None:
    assert private.root == (tmp_path / "stack").resolve()
    for var, field in PORT_VARS.items():
        assert getattr(private, field) == int(os.environ[var])
    assert private.kafka_props == private.root / "kafka" / "server.properties"
    assert private.logs == private.root / "logs"
    assert private.kafka_version and private.apicurio_version  # from stack/pom.xml


def test_settings_defaults_and_a_relative_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in PORT_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SPILLWAY_STACK_DIR", "  ")
    s = Settings.from_env()
    assert s.root == (PROJECT_ROOT / ".stack").resolve()
    assert (s.kafka_port, s.registry_port, s.sim_port, s.smtp_port, s.smtp_http_port) == (
        9092,
        8081,
        8030,
        2525,
        8031,
    )
    monkeypatch.setenv("SPILLWAY_STACK_DIR", "var/x")
    assert Settings.from_env().root == (PROJECT_ROOT / "var" / "x").resolve()


@pytest.mark.parametrize("raw", ["abc", "0", "65536", "-1", "80.5", "9 092"])
def test_a_bad_port_is_a_user_error(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPILLWAY_STACK_SIM_PORT", raw)
    with pytest.raises(StackError, match="SPILLWAY_STACK_SIM_PORT"):
        Settings.from_env()


def test_select_by_name_and_alias(private: Settings) -> None:
    assert [s.name for s in cli.select(private, None)] == [
        "kafka",
        "registry",
        "simulator",
        "smtp-sink",
    ]
    assert [s.name for s in cli.select(private, " sim, smtp ,kafka,")] == [
        "kafka",
        "simulator",
        "smtp-sink",
    ]
    with pytest.raises(StackError, match=r"unknown service.*zookeeper"):
        cli.select(private, "kafka,zookeeper")


def test_kafka_command_and_properties_use_the_private_dir_and_ports(private: Settings) -> None:
    kafka = Kafka(private)
    cmd = kafka.command()
    assert cmd[-2:] == ["kafka.Kafka", str(private.kafka_props)]
    assert f"{private.kafka_lib}/*" in cmd
    assert f"-Dlog4j2.configurationFile={config.LOG4J_CONFIG}" in cmd
    props = kafka._properties()
    assert f"listeners=PLAINTEXT://127.0.0.1:{private.kafka_port}," in props
    assert f"CONTROLLER://127.0.0.1:{private.controller_port}" in props
    assert f"log.dirs={private.kafka_data}" in props
    assert kafka.ports == [private.kafka_port, private.controller_port]
    assert kafka.log_files == [private.logs / "kafka.out", private.logs / "server.log"]


def test_a_broker_of_another_stack_dir_is_not_ours(private: Settings) -> None:
    """What keeps `down` of a private stack away from the shared broker."""
    ours = Kafka(private)
    shared = Kafka(dataclasses.replace(private, root=PROJECT_ROOT / ".stack"))
    assert ours.owns(ours.command())
    assert not ours.owns(shared.command())
    assert not shared.owns(ours.command())
    assert not ours.owns(["java", "kafka.Kafka"])  # no properties path: someone else's


def test_registry_command_binds_its_ports_on_loopback(private: Settings) -> None:
    registry = Registry(private)
    with pytest.raises(StackError, match=r"quarkus-run\.jar"):
        registry.command()  # nothing fetched in this dir
    jar = private.apicurio_dir / "apicurio-registry-app" / "quarkus-run.jar"
    jar.parent.mkdir(parents=True)
    jar.touch()
    try:
        cmd = registry.command()
    except StackError as exc:  # no Java 21 on this machine: the finder says so
        assert "Java 21+" in str(exc)
        return
    assert cmd[-2:] == ["-jar", str(jar)]
    assert f"-Dquarkus.http.port={private.registry_port}" in cmd
    assert f"-Dquarkus.management.port={private.registry_mgmt_port}" in cmd
    assert "-Dquarkus.http.host=127.0.0.1" in cmd
    assert "-Dapicurio.rules.global.compatibility=BACKWARD" in cmd
    assert registry.owns(cmd)
    assert not registry.owns(["java", "-jar", str(PROJECT_ROOT / ".stack" / "apicurio" / "x")])


def test_python_services_commands(private: Settings) -> None:
    sim, sink = Simulator(private), SmtpSink(private)
    assert sim.command() == [
        sys.executable,
        "-m",
        "simulator.provider",
        "--host",
        "127.0.0.1",
        "--port",
        str(private.sim_port),
    ]
    assert sink.command()[1:3] == ["-m", "simulator.smtp_sink"]
    assert sink.command()[-4:] == [
        "--port",
        str(private.smtp_port),
        "--http-port",
        str(private.smtp_http_port),
    ]
    assert sim.owns(sim.command()) and not sim.owns(sink.command())
    assert sim.log_files == [private.logs / "simulator.log"]


def test_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"")
    assert common.last_lines(path, 5) == []
    path.write_bytes(b"a\nb\nc")  # no final newline
    assert common.last_lines(path, 2) == ["b", "c"]
    assert common.last_lines(path, 0) == []
    assert common.last_lines(path, -3) == []
    long = [f"line {i} " + "x" * 100 for i in range(3000)]  # > one 64 KiB block
    path.write_text("\n".join(long) + "\n")
    assert common.last_lines(path, 1000) == long[-1000:]
    assert common.last_lines(path, 10**6) == long
    path.write_bytes(b"ok\n\xff\xfe bad utf-8 \xed\xa0\x80\n")
    assert common.last_lines(path, 1) == ["\ufffd\ufffd bad utf-8 \ufffd\ufffd\ufffd"]
    path.write_bytes(b"a\nb\npart")  # a writer mid-line
    assert common.read_tail(path, 5) == (["a", "b", "part"], 8)
    assert common.read_tail(path, 5, whole_lines=True) == (["a", "b"], 4)
    assert common.read_tail(path, 0, whole_lines=True) == ([], 4)
    path.write_bytes(b"no newline at all")
    assert common.read_tail(path, 3, whole_lines=True) == ([], 0)
    with pytest.raises(OSError):
        common.last_lines(tmp_path / "absent", 1)


def test_logs_shows_each_file_with_a_header(
    private: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    private.logs.mkdir(parents=True)
    (private.logs / "kafka.out").write_text("out 1\nout 2\n")
    (private.logs / "server.log").write_text("s1\ns2\ns3\n")
    assert cli.main(["logs", "kafka", "-n", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("logs/kafka.out <==") and out[0].startswith("==> ")
    assert out[1:3] == ["out 1", "out 2"]
    assert out[3].endswith("logs/server.log <==")
    assert out[4:] == ["s2", "s3"]
    assert cli.main(["logs", "smtp"]) == 1  # no log yet
    assert "smtp-sink.log yet" in capsys.readouterr().err
    assert cli.main(["logs", "kafka,registry"]) == 2
    assert cli.main(["logs", "broker"]) == 2


def test_logs_follow_prints_whole_appended_lines_until_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.log"
    path.write_text("old\n")
    done = threading.Event()

    def writer() -> None:
        with path.open("a") as fh:
            fh.write("new 1\nnew ")
            fh.flush()
            time.sleep(0.1)
            fh.write("2\n")
        done.set()

    deadline = time.monotonic() + 10
    seen: list[str] = []

    def stop() -> bool:
        seen.extend(capsys.readouterr().out.splitlines())
        return "new 2" in seen or time.monotonic() > deadline

    threading.Thread(target=writer).start()
    assert cli.show_logs([path], 5, follow=True, stop=stop, poll_s=0.02) == 0
    assert done.wait(5)
    seen.extend(capsys.readouterr().out.splitlines())
    assert seen == ["old", "new 1", "new 2"]  # "new " alone was never printed


def test_status_and_down_of_an_empty_private_stack(
    private: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["kafka", "registry", "simulator", "smtp-sink"]
    assert all("not running" in line for line in lines), lines
    assert cli.main(["down"]) == 0
    assert capsys.readouterr().out.count("not running (no pid file)") == 4


def test_down_never_signals_a_process_that_is_not_its_own(
    private: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pid file naming another process (a recycled pid): removed, the process untouched."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        private.run.mkdir(parents=True)
        (private.run / "simulator.pid").write_text(f"{bystander.pid}\n")
        assert cli.main(["down", "--only", "simulator"]) == 0
        assert f"stale pid file {bystander.pid} removed" in capsys.readouterr().out
        assert not (private.run / "simulator.pid").exists()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def stack(*args: str) -> subprocess.CompletedProcess[str]:
    """``python3 -m harness.stack ...`` in a child, as scripts/stack runs it (``up`` leaves
    detached processes behind, which an in-process Popen would warn about)."""
    return subprocess.run(
        [sys.executable, "-m", "harness.stack", *args],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_up_status_logs_down_of_the_python_services(private: Settings) -> None:
    only = ["--only", "simulator,smtp-sink"]
    up = stack("up", *only, "--timeout", "60")
    assert up.returncode == 0, up.stdout + up.stderr
    assert "simulator: started (pid" in up.stdout and "smtp-sink: started (pid" in up.stdout
    pids = {
        name: int((private.run / f"{name}.pid").read_text())
        for name in ("simulator", "smtp-sink")
    }
    again = stack("up", *only)
    assert again.returncode == 0 and again.stdout.count("already running (pid") == 2
    status = stack("status", *only)
    assert status.returncode == 0, status.stdout
    assert f"pid {pids['simulator']}" in status.stdout and f":{private.sim_port}" in status.stdout
    logs = stack("logs", "simulator")
    assert f"listening on http://127.0.0.1:{private.sim_port}" in logs.stdout
    down = stack("down", *only)
    assert down.returncode == 0
    assert "simulator: stopped" in down.stdout and "smtp-sink: stopped" in down.stdout
    for pid in pids.values():
        assert common.proc_cmdline(pid) is None  # gone (or a zombie of no one's)
    assert stack("status", *only).returncode == 1


def test_the_wrapper_script_runs_the_package(private: Settings) -> None:
    env = {**os.environ}
    for cmd in ([str(PROJECT_ROOT / "scripts" / "stack")], ["-m", "harness.stack"]):
        done = subprocess.run(
            [sys.executable, *cmd, "status", "--only", "simulator"],
            cwd=PROJECT_ROOT if cmd[0] == "-m" else "/",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, done.stderr
        assert done.stdout.startswith("simulator  pid -")
        assert "not running" in done.stdout
    wrapper = [sys.executable, str(PROJECT_ROOT / "scripts" / "stack"), "--help"]
    helped = subprocess.run(wrapper, capture_output=True, text=True, timeout=60, cwd="/")
    assert helped.returncode == 0
    assert all(c in helped.stdout for c in ("fetch", "up", "down", "status", "logs"))

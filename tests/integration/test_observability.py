"""Observability on real components: a real Prometheus server scrapes real stage workers
during a burst; the status page is loaded in headless Chromium; the breaker metric
flips when a simulator of the test's own fails."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.metrics import TIME_TO_SEND_BUCKETS
from app.models import DispatchRequest
from app.settings import PROJECT_ROOT
from harness import burst
from harness.observe import percentile
from harness.workers import Worker, free_port, wait_until
from simulator.client import SyncSimulatorClient
from tests.plugins.stack import Env, artifacts_dir

pytestmark = pytest.mark.integration

RULES = PROJECT_ROOT / "deploy" / "prometheus" / "rules.yml"
FAST_METRICS = {"SPILLWAY_METRICS_LAG_EVERY_S": "1", "SPILLWAY_METRICS_SLOPE_WINDOW_S": "10"}
N_EVENTS = 2000


# --- a real Prometheus ------------------------------------------------------------------
class Prometheus:
    """``prometheus`` (Debian's package) scraping the given workers every second."""

    def __init__(self, workdir: Path, workers: list[Worker]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        jobs: dict[str, list[str]] = {}
        for w in workers:
            jobs.setdefault(f"spillway-{w.stage}", []).append(w.web_url.removeprefix("http://"))
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(RULES)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in jobs.items()
            ],
        }
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = workdir / "prometheus.log"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    shutil.which("prometheus") or "prometheus",
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ready = wait_until(lambda: self._get("/-/ready") is not None, timeout=30, interval=0.2)
        assert ready, self.log.read_text()[-2000:]

    def _get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                body = response.read()
                return json.loads(body) if path.startswith("/api/") else body
        except Exception:
            return None

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query: [{metric: {labels}, value: float}]."""
        answer = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert answer and answer["status"] == "success", f"{promql}: {answer}"
        return [
            {"metric": r["metric"], "value": float(r["value"][1])} for r in answer["data"]["result"]
        ]

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return result[0]["value"] if result else None

    def by(self, promql: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): r["value"] for r in self.query(promql)}

    def wait_for(self, promql: str, predicate: Any, timeout: float = 30) -> Any:
        seen: list[Any] = []

        def check() -> bool:
            seen[:] = [self.query(promql)]
            return bool(predicate(seen[0]))

        assert wait_until(check, timeout, interval=0.5), f"{promql}: last {seen}"
        return seen[0]

    def alert_rules(self) -> list[dict[str, Any]]:
        answer = self._get("/api/v1/rules?type=alert")
        return [rule for g in answer["data"]["groups"] for rule in g["rules"]]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def prometheus(env: Env) -> Iterator[Any]:
    """Factory: ``prometheus(workers)`` starts a server scraping them; stopped at the end."""
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed (Debian package prometheus; scripts/setup)")
    servers: list[Prometheus] = []
    with tempfile.TemporaryDirectory(prefix="spillway-prom-") as tmp:

        def start(workers: list[Worker]) -> Prometheus:
            server = Prometheus(Path(tmp) / str(len(servers)), workers)
            servers.append(server)
            return server

        yield start
        for server in servers:
            server.stop()


# --- headless Chromium --------------------------------------------------------------------
def chromium(profile: str) -> Any:
    """A selenium-driven headless Chromium (Debian's chromium + chromium-driver)."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.skip("chromium / chromium-driver not installed (scripts/setup installs them)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1500,1300",
        f"--user-data-dir={profile}",  # a fresh profile: nothing from other runs
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def check_status_page(url: str, screenshot: Path) -> dict[str, Any]:
    """Load the page, save a screenshot, and read what the DOM shows."""
    from selenium.webdriver.common.by import By

    profile = tempfile.TemporaryDirectory(prefix="spillway-chromium-")
    driver = chromium(profile.name)
    try:
        driver.get(url)
        assert driver.title == "Spillway status"
        driver.save_screenshot(str(screenshot))

        def rows(selector: str, key: str) -> dict[str, Any]:
            return {
                row.get_attribute(key): row
                for row in driver.find_elements(By.CSS_SELECTOR, selector)
            }

        stages = rows("#stages tr.stage", "data-stage")
        lanes = rows("#lanes tr.lane", "data-lane")
        providers = rows("#providers tr.provider", "data-provider")
        dead = rows("#dead-letters tr.dead", "data-reason")
        cell = By.CSS_SELECTOR
        return {
            "stage_lag": {
                s: r.find_element(cell, "td.lag").get_attribute("data-value")
                for s, r in stages.items()
            },
            "lane_lag": {
                lane: r.find_element(cell, "td.lag").get_attribute("data-value")
                for lane, r in lanes.items()
            },
            "providers": {
                p: {
                    "breaker": r.find_element(cell, "td.breaker").get_attribute("data-state"),
                    "quota": r.find_element(cell, "td.quota").text,
                    "sent": r.find_element(cell, "td.sent").text,
                }
                for p, r in providers.items()
            },
            "dead_total": driver.find_element(cell, "#dead-letters .total").get_attribute(
                "data-value"
            ),
            "dead_reasons": set(dead),
        }
    finally:
        driver.quit()
        profile.cleanup()


# --- the tests ----------------------------------------------------------------------------
def test_prometheus_scrapes_a_burst_and_the_status_page_shows_it(env: Env, prometheus: Any) -> None:
    route = env.workers.add("route", **FAST_METRICS)
    dispatch = env.workers.add("dispatch", **FAST_METRICS)
    peers = f"{route.web_url},{dispatch.web_url}"
    render = env.workers.add("render", **FAST_METRICS, SPILLWAY_METRICS_PEERS=peers)
    prom = prometheus([render, route, dispatch])
    assert env.workers.wait_ready(env.settings.kafka.bootstrap, env.ns, timeout=90)
    prom.wait_for('up{job=~"spillway.*"} == 1', lambda r: len(r) == 3)

    observer = env.observe()
    events = list(
        burst.events(
            N_EVENTS, env.serde, env.topic("email.raw-events"), env.samples,
            prefix=env.ns, bad_every=50,
        )
    )  # fmt: skip
    started = time.monotonic()
    for e in events:
        env.produce(e.key, e.value)
    env.producer.flush(30)

    # the status page, in Chromium, while mail is going out and dead letters come in
    def under_way() -> bool:
        env.workers.check_alive()
        snap = observer.snapshot()
        return snap.dead_records >= 5 and len(snap.sent) >= 100

    assert wait_until(under_way, timeout=120), "the run did not get going"
    shot = artifacts_dir() / "status-page.png"
    page = check_status_page(f"{render.web_url}/status", shot)
    assert shot.stat().st_size > 10_000
    assert {"render", "route", "dispatch"} <= set(page["stage_lag"])
    assert all(v not in (None, "") and int(v) >= 0 for v in page["stage_lag"].values()), page
    assert {"critical", "normal", "bulk"} <= set(page["lane_lag"]), page
    assert all(page["lane_lag"][lane] != "" for lane in ("critical", "normal", "bulk")), page
    assert "sim-http" in page["providers"], page
    provider = page["providers"]["sim-http"]
    # the shared simulator injects no errors here: the breaker must be known and closed
    assert provider["breaker"] == "closed" and provider["quota"], provider
    assert int(page["dead_total"]) >= 5 and page["dead_reasons"], page

    tally = observer.wait_for(N_EVENTS, timeout=180, check=env.workers.check_alive)
    assert tally.done == N_EVENTS, f"only {tally.done} of {N_EVENTS} ended"
    drained_s = time.monotonic() - started

    # --- what Prometheus saw ----------------------------------------------------------
    prom.wait_for(
        'sum(spillway_events_in_total{stage="render"})', lambda r: r and r[0]["value"] == N_EVENTS
    )
    # lag: every stage reports its partitions; render's lag was seen above 0 and drains
    partitions = prom.by("count by (stage) (spillway_consumer_lag)", "stage")
    assert all(partitions.get(s, 0) >= 4 for s in ("render", "route", "dispatch")), partitions
    lanes = {r["metric"]["topic"] for r in prom.query('spillway_consumer_lag{stage="dispatch"}')}
    assert {f"email.dispatch.{p}" for p in ("critical", "normal", "bulk")} <= lanes
    peak = prom.scalar('max(max_over_time(spillway_consumer_lag{stage="render"}[10m]))')
    assert peak is not None and 0 < peak <= N_EVENTS
    slope_peak = prom.scalar(
        'max(max_over_time(sum by (stage) (spillway_consumer_lag_slope{stage="render"})[10m:1s]))'
    )
    assert slope_peak is not None and slope_peak > 0
    prom.wait_for(
        "sum by (stage) (spillway_consumer_lag)", lambda r: all(x["value"] == 0 for x in r)
    )

    # time to send: one observation per email sent, by priority, with sensible values
    counts = prom.by("sum by (priority) (spillway_time_to_send_seconds_count)", "priority")
    assert counts == dict(Counter(r.priority for r in tally.sent.values())), counts
    p95 = prom.scalar(
        "histogram_quantile(0.95, sum by (le) (spillway_time_to_send_seconds_bucket))"
    )
    truth = (percentile([r.time_to_send_ms for r in tally.sent.values()], 95) or 0) / 1000
    bounds = [0.0, *TIME_TO_SEND_BUCKETS, float("inf")]
    i = next(i for i, b in enumerate(bounds) if b >= truth)  # the bucket holding the truth
    assert p95 is not None and bounds[max(0, i - 2)] <= p95 <= bounds[min(i + 1, len(bounds) - 1)]
    assert 0 < p95 < drained_s + 60, (p95, truth, drained_s)

    # provider throughput, from the send results
    sent = prom.by("sum by (provider) (spillway_emails_sent_total)", "provider")
    assert sent == {"sim-http": len(tally.sent)}

    # stage flow and dead letters
    out = prom.by('sum by (outcome) (spillway_events_out_total{stage="render"})', "outcome")
    # issue 14: render's outcome is the rendered topic of the event's priority
    out_rendered = sum(n for outcome, n in out.items() if outcome.startswith("rendered."))
    assert out_rendered + out.get("dead", 0) == N_EVENTS, out
    dead = prom.by("sum by (reason) (spillway_dead_letters_total)", "reason")
    assert dead == dict(tally.reasons()), (dead, tally.reasons())
    rendered = prom.scalar("sum(spillway_render_duration_seconds_count)")
    assert rendered == out_rendered
    render_p50 = prom.scalar(
        "histogram_quantile(0.5, sum by (le) (spillway_render_duration_seconds_bucket))"
    )
    # a duration in seconds, within the run (the figure itself belongs to the benchmarks)
    assert render_p50 is not None and 0 < render_p50 < drained_s, (render_p50, drained_s)

    # utilisation: busy fractions in [0, 1], render was busy during the burst
    for r in prom.query("spillway_agent_utilisation_ratio") + prom.query(
        "spillway_event_loop_busy_ratio"
    ):
        assert 0 <= r["value"] <= 1, r
    busy = prom.scalar('max_over_time(spillway_agent_utilisation_ratio{stage="render"}[10m])')
    assert busy is not None and busy > 0

    # the alert rules load in a real server and evaluate cleanly on real series
    rules = prom.alert_rules()
    assert len(rules) >= 7 and all(r["health"] == "ok" for r in rules), rules

    # provider request metrics come from the dispatch stage's hooks
    requests = prom.by(
        'sum by (status_class) (spillway_provider_requests_total{provider="sim-http"})',
        "status_class",
    )
    assert requests.get("2xx", 0) >= len(tally.sent), requests
    latency = prom.scalar(
        "histogram_quantile(0.95, sum by (le) "
        '(spillway_provider_request_duration_seconds_bucket{provider="sim-http"}))'
    )
    assert latency is not None and 0 < latency < 10


def test_breaker_metric_flips_when_the_provider_fails(env: Env, prometheus: Any) -> None:
    port = free_port()
    env.workers.log_dir.mkdir(parents=True, exist_ok=True)
    log = (env.workers.log_dir / f"simulator-{port}.log").open("ab")
    sim_proc = subprocess.Popen(
        [sys.executable, "-m", "simulator.provider", "--host", "127.0.0.1", "--port", str(port)],
        cwd=PROJECT_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    sim = SyncSimulatorClient(f"http://127.0.0.1:{port}")
    try:
        sim.wait_ready(timeout=20)
        sim.outage(duration_s=120, status=503)  # every send fails
        dispatch = env.workers.add(
            "dispatch",
            **FAST_METRICS,
            SPILLWAY_PROVIDER_HTTP_URL=f"http://127.0.0.1:{port}",
            SPILLWAY_PROVIDER_NAME="sim-breaker",
        )
        prom = prometheus([dispatch])
        assert env.workers.wait_ready(env.settings.kafka.bootstrap, env.ns, timeout=90)
        lane = env.topic("email.dispatch.normal")
        for i in range(80):
            event_id = f"{env.ns}-b{i}"
            value = env.serde.encode(lane, request(event_id))
            env.producer.produce(lane, key=event_id.encode(), value=value)
        env.producer.flush(10)

        # the provider is being called and failing (20 failures in the window open it)
        assert wait_until(lambda: sim.stats(series=False)["requests"] >= 20, timeout=60)
        prom.wait_for(
            'spillway_provider_breaker_state{provider="sim-breaker", state="open"} == 1',
            lambda r: len(r) == 1,
            timeout=20,
        )
        assert prom.scalar('spillway_provider_breaker_state_code{provider="sim-breaker"}') == 1
        failed = prom.scalar(
            'sum(spillway_provider_requests_total{provider="sim-breaker", status_class="5xx"})'
        )
        assert failed is not None and failed >= 1
        # the alert starts pending at once (it fires after a minute open)
        prom.wait_for(
            'ALERTS{alertname="SpillwayBreakerOpen", provider="sim-breaker"}',
            lambda r: len(r) == 1,
            timeout=15,
        )
    finally:
        for w in env.workers.workers:
            w.kill()  # retries wait on a provider that is down: no graceful stop needed
        sim.close()
        sim_proc.terminate()
        sim_proc.wait(10)


def request(event_id: str) -> DispatchRequest:
    now = int(time.time() * 1000)
    return DispatchRequest(
        event_id=event_id, priority="normal", to=f"{event_id}@example.com",
        from_address="shop@example.com", subject="s", html="<p>h</p>", text="t",
        template="newsletter", template_version="v1", source="t", accepted_at=now,
        rendered_at=now,
    )  # fmt: skip

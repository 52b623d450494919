#!/usr/bin/env python3
"""The status page at / in a real browser: Debian's chromium, driven by playwright.

Cases: the demo's healthy and degraded scenarios, a pending soak (phase begun two hours ago), and
a pending soak whose exporter then stops (the open page must say it is not updating), and
a real PostgreSQL table (a throwaway cluster this test starts) with a circuit-breaker trip inside
the window (a decided no-go, long before the due time), which then goes stale when the test stops that cluster. Each asserts the
visible text, no console error, no request leaving 127.0.0.1, no horizontal overflow at 390 px
and 1280 px; the page's self-refresh is proven with and without JavaScript (with a deadline).

`--screenshots DIR` also writes the README's screenshots (docs/images).
Report protocol: tools/rexlib.py (`browser: N passed, N failed` last).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "tools"))

import rexlib as k  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
WIDTHS = (390, 1280)
REFRESH_DEADLINE_S = 30  # the page refreshes every 10 s
FLAGS = "FEATURE_ASSIGNMENT_PIPELINE_V3=true\nFEATURE_ASSIGNMENT_PIPELINE_V3_SHADOW=false\n" \
        "FEATURE_ASSIGNMENT_PIPELINE_V3_MAX_PARALLEL=3\n"
XSS = "<script>window.__xss=1</script>"


def rfc3339(seconds_ago: float) -> str:
    t = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds_ago)
    return t.replace(microsecond=0).isoformat().replace("+00:00", "Z")


class Browser:
    """One chromium for the run; each page records console errors and every request it made."""

    def __init__(self, pw) -> None:
        # --no-sandbox: the suite runs as root in CI, where chromium's sandbox refuses to start.
        self.browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])

    def open(self, url: str, width: int = 1280, js: bool = True):
        ctx = self.browser.new_context(viewport={"width": width, "height": 844 if width < 600 else 900},
                                       java_script_enabled=js)
        page = ctx.new_page()
        page.errors, page.requests = [], []
        page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
        page.on("pageerror", lambda e: page.errors.append(str(e)))

        def route(r):
            page.requests.append(r.request.url)
            if r.request.url.startswith("http://127.0.0.1:") or r.request.url.startswith("data:"):
                r.continue_()
            else:
                r.abort()  # nothing leaves the machine, even if the page asked
        ctx.route("**/*", route)
        page.goto(url, wait_until="load")
        return page

    def close(self) -> None:
        self.browser.close()


def text(page) -> str:
    return page.inner_text("main")


def assert_page(page, port: int, expected: list[str], absent: list[str] = ()) -> str:
    """The visible text has every `expected` string and no `absent` one; no console error; every
    request went to the exporter; no horizontal overflow at either width."""
    body = text(page)
    missing = [e for e in expected if e not in body]
    if missing:
        raise k.Fail(f"missing {missing!r} in the page text:\n{body[:3000]}")
    present = [a for a in absent if a in body]
    if present:
        raise k.Fail(f"unexpected {present!r} in the page text")
    return assert_page_meta(page, port)


def rendered(page) -> str:
    return page.inner_text("#rendered")


def check_refresh_js(page) -> str:
    """The script swaps <main> in place: the render time changes and the scroll position stays."""
    page.set_viewport_size({"width": 390, "height": 844})
    page.evaluate("window.scrollTo(0, 900)")
    y0, before = page.evaluate("scrollY"), rendered(page)
    page.evaluate("document.getElementById('page').dataset.marker = 'old'")
    k.wait_until("the page to refresh itself", lambda: rendered(page) != before
                 and page.evaluate("document.getElementById('page').dataset.marker") is None,
                 REFRESH_DEADLINE_S, 0.5)
    y1 = page.evaluate("scrollY")
    if abs(y1 - y0) > 1 or y0 < 800:
        raise k.Fail(f"the refresh moved the reader: scrollY {y0} -> {y1}")
    if page.errors:
        raise k.Fail(f"console errors while refreshing: {page.errors}")
    return f"{before} -> {rendered(page)}, scrollY stays {y1}"


def check_runbook(page, port: int) -> str:
    """Follow the circuit card's runbook link: the built-in runbook, scrolled to its section, and
    nothing loaded from elsewhere (the page works air-gapped)."""
    page.locator("a[href='runbook#rolloutcircuitbreakeropen']").click()
    page.wait_for_url(f"http://127.0.0.1:{port}/runbook#rolloutcircuitbreakeropen", timeout=10_000)
    heading = page.locator("h2#rolloutcircuitbreakeropen")
    if heading.inner_text() != "RolloutCircuitBreakerOpen" or not heading.is_visible():
        raise k.Fail("no visible section #rolloutcircuitbreakeropen")
    top = page.evaluate("document.getElementById('rolloutcircuitbreakeropen').getBoundingClientRect().top")
    if not -2 <= top < 200:
        raise k.Fail(f"the section is not scrolled into view (top {top})")
    note = assert_page_meta(page, port)
    page.go_back()
    return note


def assert_page_meta(page, port: int) -> str:
    """No console error, every request to the exporter, no horizontal page overflow."""
    if page.errors:
        raise k.Fail(f"console errors: {page.errors}")
    away = [u for u in page.requests if not u.startswith(f"http://127.0.0.1:{port}/") and not u.startswith("data:")]
    if away:
        raise k.Fail(f"requests leaving the exporter: {away}")
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        sw, iw = page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
        if sw > iw:
            raise k.Fail(f"horizontal overflow at {width} px: scrollWidth {sw} > innerWidth {iw}")
    return f"{len(page.requests)} request(s), all to 127.0.0.1:{port}"


def check_offline(page) -> str:
    """The exporter has stopped: within one refresh (plus slack) the page must say so at the top."""
    page.wait_for_selector("#offline", timeout=REFRESH_DEADLINE_S * 1000)
    note = page.inner_text("#offline")
    if not note.startswith("\u26a0 NOT UPDATING: the exporter did not answer"):
        raise k.Fail(f"offline note: {note!r}")
    if not page.title().startswith("NOT UPDATING"):
        raise k.Fail(f"tab title: {page.title()!r}")
    if page.evaluate("getComputedStyle(document.querySelector('.banner')).filter") == "none":
        raise k.Fail("the decision banner is not greyed")
    return note


def check_refresh_nojs(browser: Browser, url: str) -> str:
    """Without JavaScript the <noscript> meta refresh reloads the page."""
    page = browser.open(url, js=False)
    before = rendered(page)
    k.wait_until("the meta refresh to reload the page", lambda: rendered(page) != before, REFRESH_DEADLINE_S, 0.5)
    page.context.close()
    return f"{before} -> reloaded"


def exporter(procs: k.Processes, binary: str, name: str, args: list[str], env: dict | None = None) -> tuple[int, str]:
    port = k.free_port()
    e = dict(os.environ, **(env or {}))
    e.pop("DATABASE_URL", None)
    procs.start(name, [binary, *args, "--listen", f"127.0.0.1:{port}", "--environment", "staging"], env=e)
    url = f"http://127.0.0.1:{port}/"
    k.wait_until(f"{name} ready", lambda: k.http_ok(url + "readyz"), 60)
    return port, url


def shot(page, out: pathlib.Path | None, name: str, width: int) -> None:
    """The top of the page as a reader first sees it (a phone's 390 x 844, a laptop's 1280 x 720):
    small PNGs for the README."""
    if out is None:
        return
    page.set_viewport_size({"width": width, "height": 844 if width < 600 else 720})
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(out / name))


# ---------------------------------------------------------------- a throwaway PostgreSQL cluster


def pg_bin(name: str) -> str:
    dirs = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
    for d in dirs:
        if (d / name).exists():
            return str(d / name)
    return k.need_tool(name, "postgresql")


def as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: then run it as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


class Cluster:
    """initdb into a temp dir, postgres on a free loopback port in its own process group."""

    def __init__(self, procs: k.Processes) -> None:
        self.procs = procs
        self.dir = k.temp_dir("rex-browser-pg-")  # its own: the postgres user must reach it
        if os.geteuid() == 0:
            k.run(["chown", "postgres:postgres", self.dir], check=True)
        data = self.dir / "data"
        k.run(as_postgres([pg_bin("initdb"), "-A", "trust", "-U", "postgres", "--no-sync", "-D", data]), check=True)
        self.port = k.free_port()
        self.proc = procs.start("postgres", as_postgres([
            pg_bin("postgres"), "-D", data, "-p", self.port, "-k", self.dir,
            "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]))
        k.wait_until("the throwaway cluster to accept connections",
                     lambda: k.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", self.port]).returncode == 0, 30)
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def sql(self, text: str) -> str:
        return k.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", "127.0.0.1", "-p", self.port,
                      "-U", "postgres", "-d", "postgres", "-c", text], check=True).stdout

    def stop(self) -> None:
        """Fast shutdown (SIGINT to its process group: postgres and runuser, both ours)."""
        os.killpg(self.proc.pid, signal.SIGINT)
        k.wait_until("the cluster to stop", lambda: self.proc.poll() is not None, 30)
        self.procs.stop(self.proc)


SEED = """
CREATE TABLE observability_events (
    id bigserial PRIMARY KEY, source text NOT NULL, event_type text, context jsonb,
    created_at timestamptz NOT NULL DEFAULT now(), note text);
INSERT INTO observability_events (source, event_type, context, created_at)
-- 12,345 bookings over the last two hours: 45 manual reviews (every 274th), 12,300 confirmed.
SELECT 'assignment.coordinator', t.et, jsonb_build_object('booking_id', 'b' || g) || t.ctx,
       now() - interval '2 hours' + g * interval '500 milliseconds' + t.delay
FROM generate_series(1, 12345) g
CROSS JOIN LATERAL (VALUES
    ('coordinator.start', '{}'::jsonb, interval '0'),
    (CASE WHEN g % 274 = 0 THEN 'coordinator.manual_review' ELSE 'coordinator.confirmed' END,
     CASE WHEN g % 274 = 0 THEN '{"reason": "ambiguous_address"}'::jsonb ELSE '{}'::jsonb END,
     interval '1 millisecond')) AS t(et, ctx, delay);
INSERT INTO observability_events (source, event_type, context, created_at) VALUES
  ('assignment.coordinator', 'coordinator.retry', jsonb_build_object('booking_id', 'b1', 'reason', $x$XSS$x$),
   now() - interval '90 minutes'),
  ('assignment.coordinator', 'coordinator.circuit_open', '{"reason": "pricing_service_unavailable"}',
   now() - interval '30 minutes');
"""


# ---------------------------------------------------------------- the cases


def demo_cases(r: k.Report, b: Browser, procs: k.Processes, binary: str, out: pathlib.Path | None) -> None:
    port, url = exporter(procs, binary, "demo-healthy", ["demo", "--scenario", "healthy",
                                                         "--grafana-url", "http://127.0.0.1:3000/d/rollout-exporter-soak"])
    page = b.open(url)
    r.run("healthy demo: GO, every criterion PASS, numbers for people",
          lambda: assert_page(page, port, ["GO", "Every criterion passes over the last 48h.", "99.6%", "at least 97%",
                                           "0.4%", "below 1%", "more manual reviews would fail it.",
                                           "95% interval", "conclusive", "Decided: the soak window has elapsed.",
                                           "48 h 0 m of 48 h 0 m elapsed", "Error budget left:", "What happened",
                                           "Grafana soak dashboard"],
                              ["FAIL", "NO-GO", "PENDING"]))
    shot(page, out, "status-healthy.png", 1280)
    r.run("the page refreshes itself in place (JavaScript): new render, same scroll position",
          lambda: check_refresh_js(page))
    # The step that holds `now` is still filling (bookings in flight read as unconfirmed): it is
    # drawn open and never crossed (src/outputs/chart.rs), so a healthy soak's chart has no alarm at
    # its right edge. Checked after the refresh, when live traffic has reached the current step.
    marks = page.locator("svg .fail-mark").count()
    r.check(marks == 0, "healthy demo: the chart marks no step as failing", f"{marks} fail mark(s)")
    page.context.close()
    r.run("the page refreshes itself without JavaScript (meta refresh)", lambda: check_refresh_nojs(b, url))
    procs.stop("demo-healthy")

    port, url = exporter(procs, binary, "demo-degraded", ["demo", "--scenario", "degraded"])
    page = b.open(url, width=390)
    r.run("degraded demo: NO-GO, FAIL in words, margins, runbook links, journal",
          lambda: assert_page(page, port, ["NO-GO", "Failing: Success ratio, Manual-review ratio, No sustained errors, "
                                           "No circuit-breaker trips.", "FAIL", "Needs", "Runbook: what to do",
                                           "Error budget spent", "circuit trip", "sustained errors",
                                           "pricing_service_unavailable"], ["Every criterion passes"]))
    r.check(page.locator("a[href='runbook#rolloutcircuitbreakeropen']").count() == 1,
            "degraded demo: the failing circuit criterion links its runbook section")
    shot(page, out, "status-degraded-phone.png", 390)
    r.run("degraded demo: the runbook link opens the exporter's own /runbook at that section",
          lambda: check_runbook(page, port))
    page.context.close()
    procs.stop("demo-degraded")

    port, url = exporter(procs, binary, "demo-pending", ["demo", "--phase-started-at", rfc3339(2 * 3600)])
    page = b.open(url)
    r.run("pending: a phase begun two hours ago says PENDING, why, and how long is left",
          lambda: assert_page(page, port, ["PENDING", "Pending because too early", "2 h 0 m of 48 h 0 m elapsed",
                                           "46 h 0 m remaining", "WAITING", "to go.",
                                           "Not decided yet. If the rates since the phase began continue",
                                           "of which 46 h 0 m are before this phase began"], ["NO-GO"]))
    procs.stop("demo-pending")
    r.run("exporter gone: the open page says NOT UPDATING within a refresh, greys the decision, marks the tab",
          lambda: check_offline(page))
    page.context.close()


def database_cases(r: k.Report, b: Browser, procs: k.Processes, binary: str, out: pathlib.Path | None) -> None:
    cluster = Cluster(procs)
    cluster.sql(SEED.replace("XSS", XSS))
    flags = procs.tmp / "flags.env"
    flags.write_text(FLAGS)
    port, url = exporter(procs, binary, "serve", [
        "serve", "--database-url", cluster.url, "--flags-file", flags, "--phase-started-at", rfc3339(3 * 3600),
        "--poll-interval", "1s", "--max-staleness", "5s"])
    page = b.open(url)
    r.run("real table: a circuit trip in the window is a decided NO-GO, with the SQL's numbers formatted",
          lambda: assert_page(page, port, ["NO-GO", "Failing: No circuit-breaker trips.",
                                           "Decided: this NO-GO is already certain.", "waiting cannot make it a go",
                                           "12,300 of 12,345 confirmed", "95% interval",
                                           "99.6%", "45 of 12,345 reviewed", "0.4%", "1 trip", "Passes again about", "if there is no further trip", "circuit trip",
                                           "ambiguous_address", "Database \u2713 up"], ["PENDING"]))
    r.run("real table: a reason holding <script> is shown as text, never run",
          lambda: (XSS in text(page) and page.evaluate("window.__xss") is None) or k.Fail(
              "the reason was not shown as text, or its script ran"))
    shot(page, out, "status-no-go.png", 1280)
    cluster.stop()
    r.run("stale: with the database stopped the refreshed page says PENDING, stale, database DOWN",
          lambda: k.wait_until("the stale page", lambda: all(s in text(page) for s in (
              "PENDING", "Stale: stale data", "DOWN: polls are failing", "the database stopped answering")),
              REFRESH_DEADLINE_S, 0.5) and assert_page(page, port, ["Pending because stale data"]))
    page.context.close()
    procs.stop("serve")


def main(r: k.Report, out: pathlib.Path | None) -> None:
    binary = os.environ.get("ROLLOUT_EXPORTER_BIN", str(k.REPO / "target" / "debug" / "rollout-exporter"))
    if not os.access(binary, os.X_OK):
        if k.CI:
            r.fail("exporter binary", f"{binary} not built (CI=true: the browser tests cannot be skipped)")
        else:
            r.skip("browser tests", f"{binary} not built (cargo build, or set ROLLOUT_EXPORTER_BIN)")
        return
    if not os.access(CHROMIUM, os.X_OK):
        r.tool("chromium", "chromium")  # FAIL under CI=true, SKIP otherwise
        return
    from playwright.sync_api import sync_playwright

    procs = k.Processes("rex-browser-")
    try:
        with sync_playwright() as pw:
            b = Browser(pw)
            try:
                r.comment("demo: healthy, degraded, pending")
                demo_cases(r, b, procs, binary, out)
                r.comment("a real table in a throwaway cluster: no-go, then stale")
                database_cases(r, b, procs, binary, out)
            finally:
                b.close()
    except k.Fail as e:
        r.fail("browser tests ran to the end", f"{e}\n--- last exporter log\n{procs.log_tail(procs.procs[-1][0]) if procs.procs else ''}")
    finally:
        procs.stop_all()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--screenshots", type=pathlib.Path, help="also write the README's screenshots here")
    args = ap.parse_args()
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    sys.exit(k.standalone("browser", lambda r: main(r, args.screenshots)))

"""The dashboard in a real browser: Debian's headless Chromium, driven by
Playwright, against a real ``baton up`` (conductor, viewer and gateway
subprocesses on 127.0.0.1 port 0).

``pytest -m browser`` runs these alone. ``make test`` installs Chromium first
(tools/browser.sh); run by hand without it they skip, except under CI
(CI=true), where a missing browser means the install step is broken.
Screenshots go under each test's tmp_path; their paths are printed (``-s``).
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.webstack import BatonUp, browser_missing, launch_chromium
from tests.gateway_harness import Http

pytestmark = pytest.mark.browser

# A step that saves a checkpoint (config.yaml and job.json, made aside and
# renamed in whole), then prints a numbered line every 0.2 s, and one line
# that would be markup if the page ever wrote a log as HTML. A pause with a
# checkpoint sends SIGTERM: it exits, and resume starts the step again.
TICKER = r"""
trap 'echo paused; exit 0' TERM
d="$BATON_CHECKPOINT_DIR/.ckpt-$$"
mkdir -p "$d"
printf 'lr: 0.25\nlayers: 4\n' > "$d/config.yaml"
printf '{"name": "ticker", "note": "<b>spec</b>"}' > "$d/job.json"
mv "$d" "$BATON_CHECKPOINT_DIR/ckpt-$(date +%s%N)"
echo '<img src=x onerror="document.title=1">'
i=0
while true; do i=$((i+1)); echo "tick $i"; sleep 0.2; done
"""
TOKENS = {"reader": "tok-reader-1", "operator": "tok-op-ml-2", "admin": "tok-admin-3"}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = browser_missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = launch_chromium(p)
        yield chromium
        chromium.close()


def _submit(up: BatonUp, name: str, command: str, project: str = "ml", token: str | None = None) -> str:
    spec = {"name": name, "project": project, "command": command, "pause": {"grace": "5s"}}
    job = Http(up.addresses["gateway"], token).ok("POST", "/v1/jobs", {"specYaml": yaml.safe_dump(spec)})
    return str(job["id"])


def _until(page: Any, expression: str, timeout: float = 10_000) -> None:
    """Wait until the JavaScript ``expression`` holds in the page; an element not there yet is false.

    A function, not an expression string: Playwright evaluates a string with
    eval, which the gateway's Content-Security-Policy rightly refuses.
    """
    page.wait_for_function(f"() => {{ try {{ return {expression}; }} catch {{ return false; }} }}",
                           timeout=timeout)  # fmt: skip


def _wait_state(page: Any, state: str, timeout: float = 20_000) -> None:
    page.wait_for_selector(f"#job-state [data-state='{state}']", timeout=timeout)


def _shot(page: Any, path: Path, what: str) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path} ({what})")


def test_runs_appear_live_and_a_run_pauses_resumes_and_follows_its_log(browser: Any, tmp_path: Path) -> None:
    with BatonUp(tmp_path / "stack") as up:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(up.url + "/")
        page.wait_for_selector("#runs-live[data-state='live']")
        page.wait_for_selector("#runs-body tr.empty")
        # Set on this document: still there later means the page was never reloaded.
        page.evaluate("window.notReloaded = true")

        job_id = _submit(up, "ticker", TICKER)
        row = f"#runs-body tr[data-job-id='{job_id}']"
        page.wait_for_selector(f"{row} [data-state='RUNNING']", timeout=20_000)
        quick_id = _submit(up, "quick", "echo done")
        page.wait_for_selector(f"#runs-body tr[data-job-id='{quick_id}'] [data-state='SUCCEEDED']")
        broken_id = _submit(up, "broken", "echo no data; exit 3")
        page.wait_for_selector(f"#runs-body tr[data-job-id='{broken_id}'] [data-state='FAILED']")
        # Newest first.
        assert page.eval_on_selector_all("#runs-body tr", "rows => rows.map(r => r.dataset.jobId)") == [
            broken_id, quick_id, job_id,
        ]  # fmt: skip
        # Stats, projects and recent failures come from the viewer's index.
        page.wait_for_selector(".project[data-project='ml']")
        _until(page, "document.querySelector('[data-stat=running] .stat-value').textContent === '1'")
        _until(page, "document.querySelector('#recent-failures a').textContent === 'broken'")
        _shot(page, tmp_path / "runs-table.png", "runs table: 3 runs, stats, a recent failure, project ml")

        # Filter by state, then clear the filter.
        page.select_option("select[name=state]", "RUNNING")
        _until(page, f"document.querySelectorAll('#runs-body tr').length === 1 && "
                     f"document.querySelector(\"{row}\") !== null")  # fmt: skip
        assert "state=RUNNING" in page.url
        page.select_option("select[name=state]", "SUCCEEDED")
        _until(page, f"[...document.querySelectorAll('#runs-body tr')].map(r => r.dataset.jobId)"
                     f".join() === '{quick_id}'")  # fmt: skip
        page.select_option("select[name=state]", "")
        _until(page, "document.querySelectorAll('#runs-body tr').length === 3")

        # The run's page: its log follows live.
        page.click(f"{row} a")
        page.wait_for_url(re.compile(f"#/jobs/{job_id}$"))
        page.wait_for_selector("#log-live[data-state='live']")
        _until(page, "/tick \\d+/.test(document.getElementById('log').textContent)")
        last = max(int(n) for n in re.findall(r"tick (\d+)", page.text_content("#log") or ""))
        _until(page, f"document.getElementById('log').textContent.includes('tick {last + 3}\\n')")
        # Hostile output is text, not markup.
        assert '<img src=x onerror="document.title=1">' in (page.text_content("#log") or "")
        assert page.query_selector("#log img") is None and page.title() == "ticker · Baton"

        # Its checkpoint, config and job.json (the viewer indexes it by inotify).
        page.wait_for_selector("#checkpoints button.config", timeout=20_000)
        page.click("#checkpoints button.config")
        _until(page, "document.getElementById('checkpoint-file').textContent.includes('\"lr\": 0.25')")
        page.click("#checkpoints button.jobspec")
        _until(page, "document.getElementById('checkpoint-file').textContent.includes('<b>spec</b>')")
        assert page.query_selector("#checkpoint-file b") is None
        _shot(page, tmp_path / "run-page.png", "run page: RUNNING, controls, summary, health, live log")

        # Pause with a checkpoint, resume; pause by suspending, resume.
        assert page.is_disabled("#resume") and page.is_enabled("#pause-checkpoint")
        page.click("#pause-checkpoint")
        _wait_state(page, "PAUSED")
        assert page.is_enabled("#resume") and page.is_disabled("#pause-checkpoint")
        _until(page, "document.getElementById('log').textContent.includes('paused')")
        page.click("#resume")
        _wait_state(page, "RUNNING")
        page.wait_for_selector("#pause-suspend:enabled")
        page.click("#pause-suspend")
        _wait_state(page, "PAUSED")
        _until(page, "document.getElementById('job-state').textContent === 'PAUSED' && "
                     "document.body.textContent.includes('yes (suspended)')", timeout=20_000)  # fmt: skip
        page.click("#resume")
        _wait_state(page, "RUNNING")

        # The runs table saw all of it without a reload.
        page.click("a.brand")
        page.wait_for_selector(f"{row} [data-state='RUNNING']")
        assert page.evaluate("window.notReloaded") is True

        # A phone's width: nothing wider than the screen.
        phone = browser.new_page(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
        phone.goto(up.url + "/")
        phone.wait_for_selector(f"{row} [data-state='RUNNING']")
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        _shot(phone, tmp_path / "phone-runs.png", "runs table at 390 px")
        phone.goto(f"{up.url}/#/jobs/{job_id}")
        _until(phone, "/tick \\d+/.test(document.getElementById('log').textContent)")
        assert phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        _shot(phone, tmp_path / "phone-run.png", "run page at 390 px")
        phone.close()

        # Cancel, after the confirmation.
        page.click(f"{row} a")
        page.wait_for_selector("#cancel:enabled")
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#cancel")
        _wait_state(page, "CANCELLED")
        page.wait_for_selector("#log-live[data-state='complete']")
        assert "complete: CANCELLED" in (page.text_content("#log-live") or "")
        assert page.query_selector_all("#controls button:enabled") == []
        assert errors == []
        page.close()


def _token_file(path: Path) -> Path:
    def entry(name: str, role: str, **extra: Any) -> dict[str, Any]:
        digest = hashlib.sha256(TOKENS[name].encode()).hexdigest()
        return {"name": name, "role": role, **extra, "sha256": digest}

    entries = [entry("reader", "reader"), entry("operator", "operator", projects=["ml"]),
               entry("admin", "admin")]  # fmt: skip
    path.write_text(yaml.safe_dump({"tokens": entries}))
    return path


def _log_in(page: Any, token: str) -> None:
    page.fill("#token", token)
    page.click("#login button[type=submit]")


def test_a_protected_dashboard_asks_for_a_token_and_shows_each_role_its_controls(
    browser: Any, tmp_path: Path
) -> None:
    tokens = _token_file(tmp_path / "tokens.yaml")
    with BatonUp(tmp_path / "stack", "--token-file", str(tokens), token=TOKENS["admin"]) as up:
        assert Http(up.addresses["gateway"]).get("/v1/conductor:info").status == 401
        ml = _submit(up, "sleeper", "exec sleep 600", "ml", TOKENS["admin"])
        other = _submit(up, "sleeper", "exec sleep 600", "other", TOKENS["admin"])

        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.goto(up.url + "/")
        page.wait_for_selector("#login")
        _log_in(page, "not-a-token")
        _until(page, "document.getElementById('login-message').textContent.includes('not accepted')")
        _shot(page, tmp_path / "login.png", "login form after a wrong token")

        _log_in(page, TOKENS["reader"])
        page.wait_for_selector(f"#runs-body tr[data-job-id='{ml}'] [data-state='RUNNING']", timeout=20_000)
        assert page.text_content("#caller") == "reader (reader)"
        assert "baton_session" not in page.evaluate("document.cookie")  # HttpOnly
        page.goto(f"{up.url}/#/jobs/{ml}")
        _wait_state(page, "RUNNING")
        page.wait_for_selector("#log-live[data-state='live']")
        assert page.query_selector_all("#controls button") == []
        _shot(page, tmp_path / "reader-run-page.png", "run page as a reader: no controls")

        page.click("#logout")
        page.wait_for_selector("#login")
        _log_in(page, TOKENS["operator"])
        page.wait_for_selector("#caller")
        assert page.text_content("#caller") == "operator (operator)"
        page.goto(f"{up.url}/#/jobs/{ml}")
        page.wait_for_selector("#pause-checkpoint:enabled")
        assert len(page.query_selector_all("#controls button")) == 4
        page.goto(f"{up.url}/#/jobs/{other}")
        _wait_state(page, "RUNNING")
        assert page.query_selector_all("#controls button") == []
        context.close()


def test_a_long_log_keeps_its_last_256k_characters_whole(browser: Any, tmp_path: Path) -> None:
    """600 kB of two-byte characters, written once the page follows: the page keeps the end,
    cut at a line, and no character is broken where a chunk of bytes split it."""
    go = tmp_path / "go"
    writer = (
        f"while [ ! -e {go} ]; do sleep 0.05; done\n"
        "python3 -c \"import sys\n"
        "for i in range(6000): sys.stdout.write(f'{i:06d} ' + 'é' * 46 + '\\n')\""
    )
    with BatonUp(tmp_path / "stack") as up:
        job_id = _submit(up, "writer", writer)
        page = browser.new_page()
        page.goto(f"{up.url}/#/jobs/{job_id}")
        page.wait_for_selector("#log-live[data-state='live']")
        go.touch()
        t0 = time.monotonic()
        try:
            page.wait_for_selector("#log-live[data-state='complete']", timeout=60_000)
        except Exception:
            job = Http(up.addresses["gateway"]).ok("GET", f"/v1/jobs/{job_id}")
            shown = page.evaluate("() => [document.getElementById('log-live').textContent, "
                                  "document.getElementById('log').textContent.length]")  # fmt: skip
            raise AssertionError(f"the log never completed: page {shown}, job {job['state']}") from None
        print(f"600 kB log followed to its end in {time.monotonic() - t0:.1f} s")
        text = page.text_content("#log") or ""
        assert "complete: SUCCEEDED, exit code 0" in (page.text_content("#log-live") or "")
        assert len(text) <= 256 * 1024
        assert len(text) > 200 * 1024  # kept most of what it may
        assert text.endswith("005999 " + "é" * 46 + "\n")
        assert re.fullmatch(r"(\d{6} é{46}\n)+", text), "a line cut, or a character broken"
        assert page.is_visible(".clipped")
        page.close()

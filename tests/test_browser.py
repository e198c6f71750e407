"""The comparison workflow in a real browser: a small sweep, fnnlab-ui serving it on
127.0.0.1, and headless Chromium (Debian's package) checking what the MLflow UI shows.

Also takes the screenshots the README shows: docs/parent.png (the sweep's parent run),
docs/report.png (its report in MLflow's artifact viewer) and docs/compare.png.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import BIN, TmpStore, default_run_dir, run_script
from server_fixtures import stop_group

from fnnlab.config import project_root

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTHS, LRS = (4, 16), (0.05, 0.5)
DOCS = project_root() / "docs"
SCREENSHOT = DOCS / "compare.png"
# What uvicorn's access log prints per request; fnnlab-ui must keep it off the terminal.
ACCESS_LOG = re.compile(r'"(GET|POST) /|HTTP/1\.1" \d{3}')

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt)"),
]


class UiProcess:
    """fnnlab-ui in its own process group, its output collected line by line."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [str(BIN / "fnnlab-ui"), *args, *default_run_dir("fnnlab-ui", args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None and not self.reader.is_alive():
                break
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        """The whole group (fnnlab-ui, mlflow server, uvicorn)."""
        stop_group(self.proc)


def port_open(url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, int(port))) == 0


@pytest.fixture
def swept(store: TmpStore) -> TmpStore:
    """A 2 widths x 2 learning rates sweep, few epochs, in the test's own store."""
    widths, lrs = ",".join(map(str, WIDTHS)), ",".join(map(str, LRS))
    out = run_script(
        "fnnlab-train",
        "-m",
        f"model.hidden_dim={widths}",
        f"optim.lr={lrs}",
        "seed=0,1",
        "train.epochs=20",
        "tracking.plots=false",
        *store.overrides(),
    )
    assert out.returncode == 0, out.stderr
    return store


@pytest.fixture
def ui(swept: TmpStore) -> Iterator[UiProcess]:
    """fnnlab-ui on a free port (ui.port=0), stopped whatever happens."""
    proc = UiProcess(
        f"tracking.uri={swept.uri}",
        f"tracking.experiment={swept.experiment}",
        "ui.port=0",
        "ui.sweep=latest",
    )
    url = None
    try:
        url = proc.wait_for(r"^experiment \S+: (\S+)").group(1)
        proc.wait_for(r"^Ctrl-C stops the UI")
        yield proc
    finally:
        proc.stop()
    assert proc.proc.returncode is not None
    assert url is None or not port_open(url), "the UI still listens after fnnlab-ui stopped"


def close_assistant(page) -> None:
    """MLflow's assistant side panel hides half of a page."""
    button = page.get_by_role("button", name="Close")
    if button.count():
        button.first.click()


def printed_urls(ui: UiProcess) -> dict[str, str]:
    """Every URL fnnlab-ui printed, by its label."""
    urls = {}
    for line in ui.lines:
        if m := re.match(r"^\s*(?:experiment )?([^:]+): +(http\S+)$", line.strip()):
            urls[m.group(1)] = m.group(2)
    return urls


def test_sweep_compared_in_mlflow_ui(swept: TmpStore, ui: UiProcess) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a shared CI machine can be slow to render

    urls = printed_urls(ui)
    parent = swept.runs("tags.role = 'sweep'")
    assert len(parent) == 1
    parent = parent[0]
    children = swept.runs(f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 * len(WIDTHS) * len(LRS)
    names = {r.info.run_name for r in children}
    assert names == {f"h{w}-lr{lr:g}-s{s}-epochs20" for w in WIDTHS for lr in LRS for s in (0, 1)}
    # fnnlab-ui compares exactly the sweep's runs, in one experiment, on its own port.
    base = urls[swept.experiment].split("/#")[0]
    assert {"parent run", "report", "side by side", "loss curves", "gradient norms"} <= set(urls)
    assert all(u.startswith(base + "/#/") for u in urls.values()), urls
    compare = urls["side by side"]
    ids = json.loads(unquote(re.search(r"runs=([^&]+)", compare).group(1)))
    assert sorted(ids) == sorted(r.info.run_id for r in children)
    by_id = {r.info.run_id: r for r in children}
    leader = parent.data.tags["aggregate.leader"]
    assert leader.startswith("hidden_dim=")

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(60_000)
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            # Every printed link opens a page that renders without an error.
            for label, url in urls.items():
                page.goto(url)
                expect(page.locator("#root")).not_to_be_empty()
                body = page.locator("body")
                expect(body).not_to_have_text(re.compile("Something went wrong|not found", re.I))
                assert not errors, (label, errors)

            # Experiment page: the parent run, its jobs folded under it.
            page.goto(urls[swept.experiment])
            names_col = page.locator(".ag-pinned-left-cols-container")
            expect(names_col.get_by_text(parent.info.run_name, exact=True)).to_be_visible()
            for name in names:
                expect(names_col.get_by_text(name, exact=True)).to_have_count(0)
            page.locator('[data-component-id$="runnamecellrenderer.tsx_46"]').first.click()
            for name in names:
                expect(names_col.get_by_text(name, exact=True)).to_be_visible()

            # The parent run's Overview: the leader line and the width x lr table.
            page.goto(urls["parent run"])
            expect(page.get_by_text(f"leader: {leader}:", exact=False).first).to_be_visible()
            close_assistant(page)
            more = page.get_by_text("Show more", exact=True)
            if more.count():  # MLflow folds a long description
                more.first.click()
            table = page.locator("table", has=page.locator("th", has_text="hidden_dim")).first
            expect(table).to_be_visible()
            for lr in LRS:
                expect(table.locator("th", has_text=f"lr={lr:g}")).to_have_count(1)
            expect(table.get_by_text("leader")).to_have_count(1)
            page.get_by_text("Description", exact=True).scroll_into_view_if_needed()
            page.screenshot(path=str(DOCS / "parent.png"))

            # The report in MLflow's artifact viewer, with its plots shown.
            page.goto(urls["report"])
            frame = page.frame_locator("iframe").first
            expect(frame.get_by_text(f"leader: {leader}:", exact=False).first).to_be_visible()
            images = frame.locator("img")
            expect(images.first).to_be_visible()
            assert images.count() >= 3
            for i in range(images.count()):
                width = images.nth(i).evaluate("img => img.naturalWidth")
                assert width >= 800, (i, width)
            page.screenshot(path=str(DOCS / "report.png"))

            # Compare page: every run's hidden_dim and lr, and the loss metric.
            page.goto(compare)
            expect(page.get_by_text(f"Comparing {len(ids)} Runs")).to_be_visible()
            for key in ("model.hidden_dim", "optim.lr"):
                row = page.locator("tr", has=page.locator("th", has_text=re.compile(f"^{key}$")))
                expect(row).to_have_count(1)
                shown = row.locator("td").all_inner_texts()
                assert shown == [by_id[i].data.params[key] for i in ids]
            loss_link = page.locator('a[title="Plot chart"]', has_text=re.compile("^loss$"))
            expect(loss_link).to_have_count(1)
            close_assistant(page)
            # For the README: only what differs between the runs, in one tall view.
            for switch in page.get_by_role("switch").all()[:2]:  # parameters, metrics
                switch.click()
            page.set_viewport_size({"width": 1400, "height": 1700})
            page.get_by_text(f"Comparing {len(ids)} Runs").scroll_into_view_if_needed()
            page.screenshot(path=str(SCREENSHOT))

            # Curves page: the runs' loss per epoch, overlaid.
            page.goto(urls["loss curves"])
            expect(page.locator("h1", has_text=re.compile("^loss$"))).to_be_visible()
            for name in names:
                expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
        finally:
            browser.close()
    for shot in ("compare.png", "parent.png", "report.png"):
        assert (DOCS / shot).stat().st_size > 10_000
    # The terminal kept its URLs: no access log, no server notices after the pages loaded.
    noise = [line for line in ui.lines if ACCESS_LOG.search(line) or "Warning" in line]
    assert not noise, noise

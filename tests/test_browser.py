"""The comparison workflow in a real browser: a small sweep, fnnlab-ui serving it on
127.0.0.1, and headless Chromium (Debian's package) checking what the MLflow UI shows.

Also takes docs/compare.png, the screenshot the README shows.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import pytest
from conftest import BIN, TmpStore, run_script

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
SCREENSHOT = project_root() / "docs" / "compare.png"

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
            [str(BIN / "fnnlab-ui"), *args],
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
        """The whole group (fnnlab-ui, mlflow server, uvicorn): TERM, then KILL if needed."""
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue
        # The group may outlive its leader for a moment; make sure nothing of it is left.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        os.killpg(self.proc.pid, signal.SIGKILL)


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
        "train.epochs=20",
        "tracking.plots=false",
        *store.overrides(),
    )
    assert out.returncode == 0, out.stderr
    return store


@pytest.fixture
def ui_urls(swept: TmpStore) -> Iterator[dict[str, str]]:
    """fnnlab-ui on a free port (ui.port=0), stopped whatever happens; the URLs it printed."""
    ui = UiProcess(
        f"tracking.uri={swept.uri}",
        f"tracking.experiment={swept.experiment}",
        "ui.port=0",
        "ui.sweep=latest",
    )
    urls: dict[str, str] = {}
    try:
        urls["experiment"] = ui.wait_for(r"^experiment \S+: (\S+)").group(1)
        urls["compare"] = ui.wait_for(r"side by side: +(\S+)").group(1)
        urls["loss"] = ui.wait_for(r"loss curves: +(\S+)").group(1)
        yield urls
    finally:
        ui.stop()
    assert ui.proc.returncode is not None
    assert not port_open(urls["experiment"]), "the UI still listens after fnnlab-ui stopped"


def test_sweep_compared_in_mlflow_ui(swept: TmpStore, ui_urls: dict[str, str]) -> None:
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a shared CI machine can be slow to render

    parent = swept.runs("tags.role = 'sweep'")
    assert len(parent) == 1
    parent = parent[0]
    children = swept.runs(f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == len(WIDTHS) * len(LRS)
    names = {r.info.run_name for r in children}
    assert names == {f"h{w}-lr{lr:g}-s0" for w in WIDTHS for lr in LRS}
    # fnnlab-ui compares exactly the sweep's runs, in one experiment, on its own port.
    compare = ui_urls["compare"]
    assert compare.startswith(ui_urls["experiment"].split("/#")[0] + "/#/compare-runs?")
    ids = json.loads(unquote(re.search(r"runs=([^&]+)", compare).group(1)))
    assert sorted(ids) == sorted(r.info.run_id for r in children)
    by_id = {r.info.run_id: r for r in children}

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.set_default_timeout(60_000)

            # Experiment page: the parent run, its four jobs folded under it.
            page.goto(ui_urls["experiment"])
            names_col = page.locator(".ag-pinned-left-cols-container")
            expect(names_col.get_by_text(parent.info.run_name, exact=True)).to_be_visible()
            for name in names:
                expect(names_col.get_by_text(name, exact=True)).to_have_count(0)
            page.locator('[data-component-id$="runnamecellrenderer.tsx_46"]').first.click()
            for name in names:
                expect(names_col.get_by_text(name, exact=True)).to_be_visible()
            listed = [
                line
                for line in names_col.inner_text().splitlines()
                if line in names or line == parent.info.run_name
            ]
            assert listed[0] == parent.info.run_name and set(listed[1:]) == names

            # Compare page: every run's hidden_dim and lr, and the loss metric.
            page.goto(compare)
            expect(page.get_by_text(f"Comparing {len(ids)} Runs")).to_be_visible()
            for key in ("model.hidden_dim", "optim.lr"):
                row = page.locator("tr", has=page.locator("th", has_text=re.compile(f"^{key}$")))
                expect(row).to_have_count(1)
                shown = row.locator("td").all_inner_texts()
                assert shown == [by_id[i].data.params[key] for i in ids]
            run_names = page.locator("tr", has=page.locator("th", has_text="Run Name:"))
            shown = run_names.locator("td").all_inner_texts()
            assert shown == [by_id[i].info.run_name for i in ids]
            loss_link = page.locator('a[title="Plot chart"]', has_text=re.compile("^loss$"))
            expect(loss_link).to_have_count(1)
            shown_numbers = [float(x) for x in re.findall(r"\d+\.\d+", page.inner_text("body"))]
            for run in children:
                loss = run.data.metrics["loss"]
                assert any(abs(loss - x) < 6e-4 for x in shown_numbers), (run.info.run_name, loss)
            assistant_close = page.get_by_role("button", name="Close")
            if assistant_close.count():  # the assistant side panel hides half the table
                assistant_close.first.click()
            # For the README: only what differs between the runs, in one tall view.
            for switch in page.get_by_role("switch").all()[:2]:  # parameters, metrics
                switch.click()
            page.set_viewport_size({"width": 1400, "height": 1700})
            page.get_by_text(f"Comparing {len(ids)} Runs").scroll_into_view_if_needed()
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))

            # Curves page: the four runs' loss per epoch, overlaid.
            page.goto(ui_urls["loss"])
            expect(page.locator("h1", has_text=re.compile("^loss$"))).to_be_visible()
            for name in names:
                expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000

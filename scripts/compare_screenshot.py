"""A PNG of MLflow's compare view of fgpo pipeline runs, taken in headless Chromium.

    python scripts/compare_screenshot.py --tracking-uri http://127.0.0.1:5000 [--experiment fgpo]
        [--out docs/mlflow-compare.png]

Compares the newest pipeline (parent) runs of the experiment (tag fgpo.kind = pipeline, at most
4): their params (profile, strategy, budget, policy, ...) and headline metrics side by side.
Needs Debian's `chromium` (apt-get install -y chromium) and the `websockets` package: the MLflow
UI renders client-side, so the page is driven over the DevTools protocol and shot once rendered.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path


def compare_url(tracking_uri: str, experiment: str, max_runs: int = 4) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"no experiment {experiment!r} at {tracking_uri}")
    runs = client.search_runs([exp.experiment_id], "tags.`fgpo.kind` = 'pipeline'",
                              order_by=["attributes.start_time DESC"], max_results=max_runs)
    if len(runs) < 2:
        raise SystemExit(f"experiment {experiment!r} holds {len(runs)} pipeline run(s); the compare view needs 2")
    ids = json.dumps([r.info.run_id for r in runs])
    query = urllib.parse.urlencode({"runs": ids, "experiments": json.dumps([exp.experiment_id])})
    return f"{tracking_uri.rstrip('/')}/#/compare-runs?{query}"


def screenshot(url: str, out: Path, width: int = 1400, height: int = 1500, wait_s: float = 12.0) -> None:
    """Open ``url`` in headless Chromium, driven over the DevTools protocol: wait for the UI to
    render, switch the params and metrics tables to "Show diff only" (what differs between the
    runs: strategy, budget, data, results), close MLflow's assistant panel, save a PNG."""
    import base64
    import socket
    import time
    import urllib.request

    from websockets.sync.client import connect

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("chromium is not installed (apt-get install -y chromium)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                 f"--user-data-dir={profile}", f"--window-size={width},{height}",
                                 f"--remote-debugging-port={port}", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            for _ in range(100):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as r:
                        pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
                    if pages:
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            else:
                raise SystemExit("chromium did not open its DevTools port")
            with connect(pages[0]["webSocketDebuggerUrl"], max_size=None) as ws:
                counter = iter(range(1, 1_000_000))

                def send(method: str, **params):
                    msg_id = next(counter)
                    ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                    while True:
                        answer = json.loads(ws.recv())
                        if answer.get("id") == msg_id:
                            return answer.get("result", {})

                send("Page.enable")
                send("Page.navigate", url=url)
                time.sleep(wait_s)
                send("Runtime.evaluate", expression="""
                    for (const label of [...document.querySelectorAll('label, span, div')]) {
                      if (label.childElementCount === 0 && label.textContent.trim() === 'Show diff only') {
                        const sw = label.closest('div').parentElement.querySelector('button[role=switch], [role=switch]');
                        if (sw && sw.getAttribute('aria-checked') !== 'true') sw.click();
                      }
                    }
                    const close = [...document.querySelectorAll('button')].find(
                      b => (b.getAttribute('aria-label') || '').toLowerCase().includes('close'));
                    if (close) close.click();
                """)
                time.sleep(2.0)
                shot = send("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True, help="an http(s) MLflow server")
    parser.add_argument("--experiment", default="fgpo")
    parser.add_argument("--out", default="docs/mlflow-compare.png", type=Path)
    args = parser.parse_args(argv)
    url = compare_url(args.tracking_uri, args.experiment)
    screenshot(url, args.out)
    print(f"{args.out}: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

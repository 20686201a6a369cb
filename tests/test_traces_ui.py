"""`reasoner traces ui`: the JSON API, and the app driven in real Chromium through selenium and Debian's
chromium-driver (`make install` installs both when missing; this test never skips)."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reasoner.traces import TraceRecorder, TraceStore, model_call_span, rollout_traces, verification_span

REPO = Path(__file__).resolve().parents[1]
THINK = "6-8 is -2, then -2+0 is -2, then -2-8 is -10"
ANSWERS = (-10, -11, -10, -9, -10, -12, -10, -10)


def _fill(path: Path) -> dict:
    """A GRPO step of 8 rollouts of one prompt (timed, with advantages) in run r-ui, plus pipeline runs."""
    now = time.time()
    ids = {}
    with TraceStore.open(path) as store:
        correct = [a == -10 for a in ANSWERS]
        rewards = {"accuracy_reward": [float(c) for c in correct], "format_reward": [1.0] * 8}
        mean = sum(rewards["accuracy_reward"]) / 8
        advantages = [round(r - mean, 3) for r in rewards["accuracy_reward"]]
        traces = rollout_traces(
            prompts=["<|user|>6-8+0-8<|assistant|>"] * 8,
            completions=[f"<think>{THINK} (rollout {i})</think>{a}" for i, a in enumerate(ANSWERS)],
            rewards=rewards, advantages=advantages, correct=correct, step=7, task="arithmetic",
            model="demo/grpo", metadata={"run": "r-ui", "group": "s7r0g0", "stage": "grpo"})
        for i, trace in enumerate(traces):
            step_span = trace.spans[0]
            step_span.start, step_span.end = now - 2.0, now - 1.0
            step_span.children[0].model_call.latency_s = 0.6
        store.add_many(traces)
        ids["wrong"] = [t.id for t, c in zip(traces, correct) if not c]
        for n in range(30):  # another run's pipeline traces, so filters have something to remove
            rec = TraceRecorder("pipeline", task="arithmetic", model="demo/sft", prompt=f"{n}+1")
            with rec.span("plan"):
                rec.add(model_call_span(f"plan {n}+1", f"<think>one step</think>[\"{n}+1\"]", latency_s=0.01,
                                        start=time.time()))
            rec.add(verification_span(True, f"{n + 1} == {n + 1}"))
            store.add(rec.finish(correct=True, reward=1.0, answer=str(n + 1), status="verified"))
    return ids


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "traces.db"
    _fill(path)
    return path


def test_api_lists_filters_and_groups(store_path):
    from fastapi.testclient import TestClient

    from reasoner.traces.ui import create_app

    client = TestClient(create_app(store_path))
    facets = client.get("/api/facets").json()
    assert facets["total"] == 38 and facets["runs"] == ["r-ui"] and set(facets["sources"]) == {"train", "pipeline"}
    wrong = client.get("/api/traces", params={"correct": "wrong"}).json()
    assert wrong["total"] == 3 and all(item["correct"] is False for item in wrong["items"])
    assert wrong["items"][0]["question"] == "6-8+0-8"  # the question, not the chat template
    assert client.get("/api/traces", params={"run": "r-ui"}).json()["total"] == 8
    assert client.get("/api/traces", params={"min_reward": 1.5, "max_reward": 2}).json()["total"] == 5
    assert client.get("/api/traces", params={"q": "rollout 5"}).json()["total"] == 1
    page = client.get("/api/traces", params={"page": 2, "page_size": 10}).json()
    assert len(page["items"]) == 10 and page["total"] == 38
    trace_id = wrong["items"][0]["id"]
    detail = client.get(f"/api/traces/{trace_id[:10]}").json()  # prefixes work as in the CLI
    assert detail["group_size"] == 8 and detail["waterfall"]["timed"]
    assert detail["answer"] in ("-11", "-9", "-12")
    group = client.get(f"/api/traces/{trace_id}/group").json()
    assert len(group["rollouts"]) == 8 and [r["index"] for r in group["rollouts"]] == list(range(8))
    assert all(r["advantage"] is not None and "accuracy_reward" in r["components"] for r in group["rollouts"])
    other = group["rollouts"][0]["id"]
    compared = client.get("/api/compare", params={"a": trace_id, "b": other}).json()
    assert compared["same_prompt"] and any(tag != "equal" for tag, _, _ in compared["answer_diff"])
    same = client.get(f"/api/traces/{trace_id}/same-problem").json()["items"]
    assert len(same) == 7
    assert client.get("/api/traces/nope").status_code == 404


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ui_server(store_path):
    """`reasoner traces ui` as a user runs it, in its own process."""
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-c", "import sys; from reasoner.cli import main; sys.exit(main())", "traces", "--store", str(store_path), "ui",
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               cwd=REPO)
    lines = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if process.poll() is not None:
                pytest.fail(f"traces ui exited: {''.join(lines)}")
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("traces ui did not start listening in 60 s")
    yield f"http://127.0.0.1:{port}/", lines
    process.terminate()
    process.wait(10)


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    assert chromium and chromedriver, ("Chromium and chromium-driver are missing: `make install` installs them "
                                       "(apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000", "--no-first-run", "--disable-background-networking"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(chromedriver), options=options)


def test_ui_in_chromium(ui_server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as seen
    from selenium.webdriver.support.ui import Select, WebDriverWait

    url, server_log = ui_server
    assert any(url.rstrip("/") in line for line in server_log)  # it says where it listens
    driver = _driver()
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(url)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#trace-list tr.trace-row")) == 38)
        assert "38 traces match" in driver.find_element(By.ID, "count").text
        # filter to wrong answers
        Select(driver.find_element(By.ID, "f-correct")).select_by_value("wrong")
        wait.until(lambda d: "3 traces match" in d.find_element(By.ID, "count").text)
        rows = driver.find_elements(By.CSS_SELECTOR, "#trace-list tr.trace-row")
        assert len(rows) == 3 and all("✘" in row.text for row in rows)
        assert "6-8+0-8" in rows[0].text and "<|user|>" not in rows[0].text
        # open a trace: think text and waterfall
        rows[0].click()
        wait.until(seen.presence_of_element_located((By.ID, "waterfall")))
        thinks = driver.find_elements(By.CSS_SELECTOR, "#tree pre.think")
        assert thinks and THINK in thinks[0].text and thinks[0].is_displayed()
        bars = driver.find_elements(By.CSS_SELECTOR, "#waterfall .wf-bar")
        assert len(bars) == 4 and all(bar.size["width"] >= 2 for bar in bars)
        assert driver.find_element(By.ID, "final-answer").text.strip() in ("-11", "-9", "-12")
        driver.save_screenshot(str(_screenshot_dir() / "traces-ui-detail.png"))
        # the GRPO group: 8 rollouts with advantages
        driver.find_element(By.ID, "open-group").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#rollouts .rollout")) == 8)
        advantages = [el.text for el in driver.find_elements(By.CSS_SELECTOR, "#rollouts .advantage")]
        assert len(advantages) == 8 and all(a not in ("", "–") for a in advantages)
        assert {a[0] for a in advantages} == {"+", "-"}
        assert "accuracy_reward=" in driver.find_element(By.CSS_SELECTOR, "#rollouts .parts").text
        driver.save_screenshot(str(_screenshot_dir() / "traces-ui-group.png"))
        # compare a right and a wrong rollout: the differing answer is marked
        driver.back()
        link = wait.until(seen.presence_of_element_located((By.CSS_SELECTOR, "a.compare-link")))
        link.click()
        wait.until(seen.presence_of_element_located((By.ID, "compare")))
        assert driver.find_elements(By.CSS_SELECTOR, "#compare del") or driver.find_elements(By.CSS_SELECTOR, "#compare ins")
        driver.save_screenshot(str(_screenshot_dir() / "traces-ui-compare.png"))
        # the list again: run filter
        driver.get(url + "#/?run=r-ui")
        wait.until(lambda d: "8 traces match" in d.find_element(By.ID, "count").text)
        driver.save_screenshot(str(_screenshot_dir() / "traces-ui-list.png"))
        # any two traces: tick them, compare
        boxes = driver.find_elements(By.CSS_SELECTOR, "input.pick")
        button = driver.find_element(By.ID, "compare-picked")
        boxes[0].click()
        assert not button.is_enabled() and driver.find_elements(By.ID, "trace-list")  # ticking does not open
        boxes[3].click()
        button.click()
        wait.until(seen.presence_of_element_located((By.ID, "compare")))
    finally:
        driver.quit()
    for name in ("list", "detail", "group", "compare"):
        assert (_screenshot_dir() / f"traces-ui-{name}.png").stat().st_size > 10_000


def _screenshot_dir() -> Path:
    folder = REPO / "runs" / "traces-ui"
    folder.mkdir(parents=True, exist_ok=True)
    return folder

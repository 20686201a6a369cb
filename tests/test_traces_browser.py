"""The exported HTML viewer, opened in real headless Chromium (Debian's `chromium` package).

The fixture installs Chromium with apt-get when it is missing and skips, saying why, only where it
cannot be installed. `--dump-dom` prints the DOM after the page's scripts ran, so the tests check
what the viewer rendered, not the file we wrote.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import pytest

from reasoner.traces import (
    TraceRecorder,
    TraceStore,
    model_call_span,
    rollout_trace,
    verification_span,
)

PHRASE = "Zebra Crossing"
MARKUP = "</script><b>not markup</b><!--"  # trace text that would break a naively inlined page
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--virtual-time-budget=10000"]


def _find_chromium() -> str | None:
    for candidate in ("chromium", "chromium-browser", "/usr/bin/chromium"):
        path = shutil.which(candidate)
        if path:
            return path
    return None


def _install_chromium() -> str | None:
    """apt-get install chromium; returns why it failed, or None."""
    if not shutil.which("apt-get"):
        return "apt-get is not available (not a Debian-like system)"
    if os.geteuid() != 0:
        return "installing needs root (run: sudo apt-get install chromium)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock_wait = ["-o", "DPkg::Lock::Timeout=600"]  # other test sessions may be installing packages too
    for command in (["apt-get", *lock_wait, "update"],
                    ["apt-get", *lock_wait, "install", "-y", "--no-install-recommends", "chromium"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=env)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` timed out"
        if done.returncode:
            return f"`{' '.join(command)}` failed: {(done.stderr or done.stdout).strip()[-400:]}"
    return None


@pytest.fixture(scope="session")
def chromium() -> str:
    path = _find_chromium()
    if path is None:
        reason = _install_chromium()
        path = _find_chromium()
        if path is None:
            pytest.skip(f"Chromium is missing and could not be installed: {reason or 'not found after install'}")
    return path


def dump_dom(chromium: str, url: str, profile: Path) -> str:
    command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "<body" in done.stdout, f"no DOM came back: {done.stderr[-2000:]}"
    return done.stdout


class Node:
    def __init__(self, tag: str, attrs: dict, parent: "Node | None"):
        self.tag, self.attrs, self.parent, self.children, self.text = tag, attrs, parent, [], []

    def iter(self):
        yield self
        for child in self.children:
            yield from child.iter()

    def find_all(self, tag: str, **attrs):
        return [n for n in self.iter() if n.tag == tag and all(
            (value in n.attrs.get(key.rstrip("_"), "").split()) if key.endswith("_") else n.attrs.get(key) == value
            for key, value in attrs.items())]

    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()

    def ancestors(self):
        node = self.parent
        while node is not None:
            yield node
            node = node.parent

    def all_text(self) -> str:
        return "".join(self.text) + "".join(child.all_text() for child in self.children)


class DomBuilder(HTMLParser):
    """Just enough of a DOM to ask what Chromium rendered: tags, attributes, text, ancestry."""

    def __init__(self):
        super().__init__()
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: (v if v is not None else "") for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID_TAGS:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.text.append(data)


def parse_dom(html: str) -> Node:
    builder = DomBuilder()
    builder.feed(html)
    return builder.root


def _pipeline_trace():
    rec = TraceRecorder("pipeline", task="math", model="tiny-moe", prompt="Solve x + 3 = 5")
    with rec.span("plan"):
        rec.add(model_call_span("Plan: x + 3 = 5", "<think>Subtract three. Like a Zebra Crossing, step by step."
                                "</think>Subtract 3 from both sides.", completion_tokens=17, latency_s=0.3))
    with rec.span("solve"):
        with rec.span("solve step 1"):
            rec.add(model_call_span("x + 3 = 5", "<think>5 - 3 = 2</think>x = 2", completion_tokens=9))
    rec.add(verification_span(True, "x = 2 satisfies the equation", verifier="sympy"))
    return rec.finish(correct=True, reward=1.0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, list]:
    folder = tmp_path_factory.mktemp("viewer")
    traces = [
        rollout_trace(prompt="What is 2+2? " + MARKUP, completion="<think>two and two</think>4", rewards={"accuracy": 1.0},
                      advantage=0.5, step=1, correct=True, task="arith", completion_tokens=6),
        rollout_trace(prompt="What is 3+3?", completion="<think>three and three</think>7", rewards={"accuracy": 0.0},
                      advantage=-0.5, step=1, correct=False, task="arith", completion_tokens=8),
        _pipeline_trace(),  # newest: listed first, so it is the one opened on load
    ]
    with TraceStore.open(folder / "traces.db") as store:
        store.add_many(traces)
    output = folder / "traces.html"
    done = subprocess.run([sys.executable, "-m", "reasoner", "traces", "--store", str(folder / "traces.db"),
                           "export", "--format", "html", "--output", str(output)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return output, traces


def test_html_loads_nothing_from_the_network(exported):
    output, _ = exported
    dom = parse_dom(output.read_text("utf-8"))
    policy = [m.attrs["content"] for m in dom.find_all("meta") if m.attrs.get("http-equiv") == "Content-Security-Policy"]
    assert policy and "default-src 'none'" in policy[0]
    for node in dom.iter():
        assert "src" not in node.attrs and "href" not in node.attrs, f"<{node.tag}> refers to another file"
    assert not dom.find_all("link") and not dom.find_all("iframe")


def test_tree_renders_in_chromium(chromium, exported, tmp_path):
    output, traces = exported
    dom = parse_dom(dump_dom(chromium, output.as_uri(), tmp_path / "profile"))
    body = dom.find_all("body")[0]
    assert body.attrs.get("data-ready") == "true", "the viewer script did not finish"
    rendered = dom.find_all("details", class_="trace")
    assert [node.attrs["data-id"] for node in rendered] == [t.id for t in reversed(traces)]  # newest first
    newest = traces[-1]
    span_ids = {node.attrs["data-span"] for node in dom.find_all("details", class_="span")}
    assert span_ids == {span.id for _, span in newest.walk()}, "the opened trace's tree is not fully rendered"
    names = [n.all_text() for n in dom.find_all("span", class_="name")]
    assert {"plan", "solve", "solve step 1", "verify"} <= set(names)
    verdicts = dom.find_all("span", class_="verdict")
    assert [v.all_text() for v in verdicts] == ["pass"] and "pass" in verdicts[0].classes()
    think = dom.find_all("details", class_="think")
    assert think and all("open" in node.attrs for node in think), "think text starts unfolded: it is what users came for"
    previews = [n.all_text() for n in dom.find_all("span", class_="preview")]
    assert any(MARKUP in text for text in previews) and not dom.find_all("b"), "trace text must stay text"
    dots = [n for n in dom.find_all("circle") if "dot" in n.classes()]
    assert len(dots) == 3  # one per trace with a reward


def test_search_finds_a_phrase_in_chromium(chromium, exported, tmp_path):
    output, traces = exported
    url = output.as_uri() + "#q=" + quote(PHRASE.lower())
    dom = parse_dom(dump_dom(chromium, url, tmp_path / "profile"))
    count = dom.find_all("span", id="match-count")[0]
    assert count.all_text() == "1 of 3 traces match"
    visible = [n.attrs["data-id"] for n in dom.find_all("details", class_="trace") if "hidden" not in n.attrs]
    assert visible == [traces[-1].id]
    marks = dom.find_all("mark")
    assert [m.all_text() for m in marks] == [PHRASE], "the phrase should be marked once, case preserved"
    think = next(a for a in marks[0].ancestors() if a.tag == "details")
    assert "think" in think.classes() and "open" in think.attrs, "a hit in folded think text must unfold it"

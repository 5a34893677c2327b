"""Misconception generator against a local chat-completions server (127.0.0.1 only)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reprotune import misconception
from reprotune.io import read_jsonl, sha256_file

REPLIES = [
    "QUESTION: Do we only use 10% of our brains?\nANSWER: No. Imaging shows nearly every region is active over a day.\n\n"
    "QUESTION: Is the Great Wall of China visible from space with the naked eye?\n"
    "ANSWER: No. It is far too narrow to be seen unaided from low Earth orbit.",
    "Sure! Here you go:\n\nQUESTION: do we only use 10%  of our brains?\nANSWER: Duplicate with other spacing.\n\n"
    "QUESTION: Does lightning never strike the same place twice?\nANSWER: It does; tall towers are struck many times a year.\n\n"
    "QUESTION: Empty answer?\nANSWER:   ",
    "I cannot help with that.",
    "QUESTION: Do bulls hate the color red?\nANSWER: Bulls are red-green colorblind; the cape's movement provokes them.",
]


class _Server:
    def __init__(self, replies, status=200):
        self.requests = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                if status != 200:
                    self.send_response(status)
                    self.end_headers()
                    return
                text = replies[min(len(outer.requests), len(replies)) - 1]
                data = json.dumps({"id": "x", "object": "chat.completion",
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()


def _spec(url, **over):
    s = {"endpoint": url, "model": "test-model", "n": 4, "seed": 3, "per_request": 5, "max_requests": 10,
         "temperature": 0.5, "api_key_env": "REPROTUNE_TEST_KEY", "timeout_s": 10}
    s.update(over)
    return s


def test_parse_pairs():
    assert misconception.parse_pairs(REPLIES[0]) == [
        ("Do we only use 10% of our brains?", "No. Imaging shows nearly every region is active over a day."),
        ("Is the Great Wall of China visible from space with the naked eye?",
         "No. It is far too narrow to be seen unaided from low Earth orbit.")]
    assert [q for q, _ in misconception.parse_pairs(REPLIES[1])] == [
        "do we only use 10%  of our brains?", "Does lightning never strike the same place twice?"]
    assert misconception.parse_pairs(REPLIES[2]) == []


def test_generate_against_local_server(tmp_path, monkeypatch):
    monkeypatch.setenv("REPROTUNE_TEST_KEY", "sk-secret-123")
    with _Server(REPLIES) as srv:
        rep = misconception.generate(_spec(srv.url), tmp_path / "gen")
    rows = list(read_jsonl(tmp_path / "gen" / "instructions.jsonl"))
    assert rows == [
        {"instruction": "Do we only use 10% of our brains?",
         "response": "No. Imaging shows nearly every region is active over a day.", "category": "misconception"},
        {"instruction": "Is the Great Wall of China visible from space with the naked eye?",
         "response": "No. It is far too narrow to be seen unaided from low Earth orbit.", "category": "misconception"},
        {"instruction": "Does lightning never strike the same place twice?",
         "response": "It does; tall towers are struck many times a year.", "category": "misconception"},
        {"instruction": "Do bulls hate the color red?",
         "response": "Bulls are red-green colorblind; the cape's movement provokes them.", "category": "misconception"},
    ]
    assert len(srv.requests) == 4  # stops as soon as n unique pairs are in
    assert {r["path"] for r in srv.requests} == {"/v1/chat/completions"}
    assert all(r["auth"] == "Bearer sk-secret-123" for r in srv.requests)
    bodies = [r["body"] for r in srv.requests]
    assert [b["seed"] for b in bodies] == [3, 4, 5, 6] and {b["model"] for b in bodies} == {"test-model"}
    assert "Generate 5 new" in bodies[0]["messages"][1]["content"]
    assert rep == {"model": "test-model", "endpoint_host": srv.url.split("/")[2], "prompt_version": 1, "seed": 3,
                   "requested": 4, "written": 4, "shortfall": 0, "requests": 4, "pairs_parsed": 5,
                   "duplicates": 1, "replies_without_pairs": 1,
                   "sha256": {"instructions.jsonl": sha256_file(tmp_path / "gen" / "instructions.jsonl")}}
    # the key is never written anywhere
    for p in (tmp_path / "gen").iterdir():
        assert b"sk-secret" not in p.read_bytes()
    # readable by the airoboros reader as misconception rows
    from reprotune import sources

    out = list(sources.get("airoboros")([tmp_path / "gen" / "instructions.jsonl"], {"category": "misconception"}, "m"))
    assert [o["id"] for o in out] == ["m/0", "m/1", "m/2", "m/3"] and all("messages" in o for o in out)


def test_same_seed_same_prompts_and_bounded_requests(tmp_path, monkeypatch):
    monkeypatch.delenv("REPROTUNE_TEST_KEY", raising=False)
    with _Server([REPLIES[2]]) as srv:  # never any pair
        with pytest.raises(misconception.MisconceptionError, match="3 request\\(s\\) gave no parseable"):
            misconception.generate(_spec(srv.url, max_requests=3), tmp_path / "g")
    assert len(srv.requests) == 3 and srv.requests[0]["auth"] is None
    with _Server([REPLIES[2]]) as srv2:
        with pytest.raises(misconception.MisconceptionError):
            misconception.generate(_spec(srv2.url, max_requests=3), tmp_path / "g")
    assert [r["body"] for r in srv.requests] == [r["body"] for r in srv2.requests]
    assert not (tmp_path / "g").exists()


def test_shortfall_written_and_reported(tmp_path):
    with _Server([REPLIES[0]]) as srv:
        rep = misconception.generate(_spec(srv.url, n=5, max_requests=2), tmp_path / "g")
    assert (rep["written"], rep["shortfall"], rep["requests"], rep["duplicates"]) == (2, 3, 2, 2)


def test_http_error_and_bad_endpoint_are_one_line(tmp_path):
    with _Server([], status=500) as srv:
        with pytest.raises(misconception.MisconceptionError) as ei:
            misconception.generate(_spec(srv.url), tmp_path / "g")
    assert "HTTP 500" in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(misconception.MisconceptionError, match="http\\(s\\) URL"):
        misconception.generate(_spec("file:///etc/passwd"), tmp_path / "g")


def test_config_schema_accepts_generator_and_frozen():
    from reprotune.recipe import RecipeError, load_config

    cfg = load_config({"recipes": ["x"], "frozen": True,
                       "misconception_generator": {"endpoint": "http://127.0.0.1:1/v1", "model": "m", "n": 5}})
    assert cfg["frozen"] is True
    from reprotune import plan

    assert plan.misconception_spec(cfg)["n"] == 5 and plan.misconception_spec({"recipes": ["x"]}) is None
    with pytest.raises(RecipeError):
        load_config({"recipes": ["x"], "misconception_generator": {"model": "m"}})


def test_rule_defined_only_when_config_asks(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    snakemake = str(Path(sys.executable).parent / "snakemake")

    def rules(*extra):
        p = subprocess.run([snakemake, "--snakefile", str(repo / "Snakefile"), "--directory", str(tmp_path),
                            "--list-rules", "--config", "recipes=[tulu-v2-qlora-70b]",
                            *(extra or ("--configfile", str(repo / "config.yaml")))],
                           capture_output=True, text=True, timeout=120,
                           env=dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"]))
        assert p.returncode == 0, p.stderr
        return p.stdout.split()

    assert "generate_misconceptions" not in rules()
    extra = tmp_path / "gen.yaml"
    extra.write_text("misconception_generator: {endpoint: 'http://127.0.0.1:9/v1', model: m, n: 5}\n")
    assert "generate_misconceptions" in rules("--configfile", str(repo / "config.yaml"), str(extra))

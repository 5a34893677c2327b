"""Generate airoboros-style misconception Q/A pairs from an OpenAI-compatible endpoint.

Optional (off by default): the ``generate_misconceptions`` rule exists only when
the workflow config has ``misconception_generator: {endpoint, model, n, seed, ...}``.
Like jondurbin's airoboros generator, each request asks the model for a batch of
``QUESTION: ... ANSWER: ...`` pairs about common misconceptions; the replies are
parsed, de-duplicated on the normalized question and written in the airoboros
schema ``{"instruction", "response", "category": "misconception"}`` (one JSON per
line, readable by the ``airoboros`` source reader).

Determinism: the prompts (topics drawn with ``random.Random(seed)``) and the
``seed`` request field are fixed; whether the *replies* repeat depends on the
server (sampling), so the generated file is pinned by its sha256 in the report
and in provenance, not promised to be reproducible.

Limits: at most ``max_requests`` requests, each with ``timeout_s``; only
``http(s)`` endpoints. The API key is read from the environment variable named by
``api_key_env`` (default ``OPENAI_API_KEY``) and sent as a bearer token; it is
never written to any file or log.

Output directory: ``instructions.jsonl`` and ``report.json`` (counts, model,
endpoint host, prompt version, sha256 of the data).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable

from reprotune.filters import normalize_text
from reprotune.io import atomic_dir, atomic_write_json, atomic_write_jsonl, sha256_file

log = logging.getLogger(__name__)
PROMPT_VERSION = 1

TOPICS = [
    "human biology", "animals", "history", "physics", "space and astronomy", "food and nutrition",
    "health and medicine", "geography", "language and words", "technology", "psychology", "law",
    "economics", "famous people", "inventions", "weather and climate", "sports", "music", "chemistry",
    "plants", "the ocean", "sleep", "the brain", "money", "ancient civilizations", "art",
]

SYSTEM = "You are a careful, factual assistant who writes training data."
PROMPT = """Here are some examples of common misconceptions people hold and the facts that correct them.

Generate {k} new, distinct question/answer pairs about common misconceptions, drawn from these topics: {topics}.
Each question should be phrased the way a person who holds the misconception might ask it; each answer
should gently correct the misconception and explain the fact, in two to four sentences.

Use exactly this format for every pair, with a blank line between pairs and nothing else:

QUESTION: <the question>
ANSWER: <the answer>
"""

_PAIR = re.compile(r"QUESTION:\s*(?P<q>.+?)\s*\n\s*ANSWER:\s*(?P<a>.+?)\s*(?=\n\s*QUESTION:|\Z)", re.S)


class MisconceptionError(RuntimeError):
    """The generator's endpoint failed or answered something unusable (one line)."""


def parse_pairs(text: str) -> list[tuple[str, str]]:
    """``QUESTION: ... ANSWER: ...`` blocks -> [(question, answer)], empty ones dropped."""
    out = []
    for m in _PAIR.finditer(text or ""):
        q, a = m.group("q").strip(), m.group("a").strip()
        if q and a:
            out.append((q, a))
    return out


def _post_json(url: str, body: dict, headers: dict, timeout: float) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), method="POST",
                                 headers={"Content-Type": "application/json", **headers})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked by caller)
        return json.loads(resp.read().decode("utf-8"))


def _chat_url(endpoint: str) -> str:
    parsed = urllib.parse.urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise MisconceptionError(f"misconception_generator.endpoint must be an http(s) URL, got {endpoint!r}")
    base = endpoint.rstrip("/")
    return base if base.endswith("/chat/completions") else base + "/chat/completions"


def generate(spec: dict, out_dir: Path, post: Callable[[str, dict, dict, float], dict] | None = None) -> dict:
    """Request pairs until ``n`` unique ones are collected or ``max_requests`` is reached; write them.

    spec: ``{"endpoint", "model", "n", "seed", "per_request", "max_requests", "temperature",
    "api_key_env", "timeout_s"}``.
    """
    post = post or _post_json
    for key in ("endpoint", "model"):
        if not spec.get(key):
            raise MisconceptionError(f"misconception_generator needs {key!r}")
    url = _chat_url(str(spec["endpoint"]))
    n = int(spec.get("n", 500))
    per_request = int(spec.get("per_request", 10))
    max_requests = int(spec.get("max_requests", 200))
    seed = int(spec.get("seed", 0))
    timeout = float(spec.get("timeout_s", 120))
    key_env = str(spec.get("api_key_env") or "OPENAI_API_KEY")
    api_key = os.environ.get(key_env, "")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    rng = random.Random(f"misconception:{seed}")
    seen: set[str] = set()
    rows: list[dict] = []
    stats = {"requests": 0, "pairs_parsed": 0, "duplicates": 0, "replies_without_pairs": 0}
    while len(rows) < n and stats["requests"] < max_requests:
        i = stats["requests"]
        topics = ", ".join(rng.sample(TOPICS, 3))
        body = {
            "model": spec["model"],
            "messages": [{"role": "system", "content": SYSTEM},
                         {"role": "user", "content": PROMPT.format(k=per_request, topics=topics)}],
            "temperature": float(spec.get("temperature", 0.7)),
            "seed": seed + i,
        }
        stats["requests"] += 1
        try:
            reply = post(url, body, headers, timeout)
            content = reply["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as e:
            raise MisconceptionError(f"{url}: HTTP {e.code} {e.reason} on request {i + 1}") from None
        except (urllib.error.URLError, OSError) as e:
            raise MisconceptionError(f"{url}: cannot reach the endpoint on request {i + 1} "
                                     f"({getattr(e, 'reason', e)})") from None
        except (KeyError, IndexError, TypeError, ValueError):
            raise MisconceptionError(f"{url}: reply {i + 1} is not a chat completion "
                                     "(no choices[0].message.content)") from None
        pairs = parse_pairs(content if isinstance(content, str) else "")
        if not pairs:
            stats["replies_without_pairs"] += 1
        stats["pairs_parsed"] += len(pairs)
        for q, a in pairs:
            k = normalize_text(q)
            if k in seen:
                stats["duplicates"] += 1
                continue
            seen.add(k)
            rows.append({"instruction": q, "response": a, "category": "misconception"})
            if len(rows) >= n:
                break
    if not rows:
        raise MisconceptionError(f"{url}: {stats['requests']} request(s) gave no parseable QUESTION/ANSWER pair")
    if len(rows) < n:
        log.warning("misconception generator: %d of %d pairs after %d requests", len(rows), n, stats["requests"])
    with atomic_dir(out_dir) as tmp:
        atomic_write_jsonl(tmp / "instructions.jsonl", rows)
        report = {
            "model": spec["model"],
            "endpoint_host": urllib.parse.urlparse(url).netloc,
            "prompt_version": PROMPT_VERSION,
            "seed": seed,
            "requested": n,
            "written": len(rows),
            "shortfall": n - len(rows),
            **stats,
            "sha256": {"instructions.jsonl": sha256_file(tmp / "instructions.jsonl")},
        }
        atomic_write_json(tmp / "report.json", report)
    return report

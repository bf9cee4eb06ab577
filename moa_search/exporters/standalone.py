"""A standalone Python script that runs a preset with nothing but httpx installed.

Why: the people who receive a tuned preset often cannot (or should not) install the search
toolkit where it runs. The script embeds the preset (config, endpoints by env var *name*, list
prices, the aggregation prompt text), builds the same messages as ``moa_search.prompts``, runs
the layers in order with the agents of a layer concurrently, and follows the runner's failure
policy: a failed proposer is dropped, a layer where all fail (or a failed aggregator) fails the
run. Keys are read from the environment when it runs; the script text never contains one.

Usage of the generated script::

    python moa_preset.py "Your prompt"        # or pipe the prompt on stdin
    python moa_preset.py --base-url http://127.0.0.1:8000/v1 --json "Your prompt"

``--base-url`` (or ``$MOA_BASE_URL``) sends every model to one endpoint; a key env var that is
unset is an error unless the endpoint is on loopback (local servers are often keyless).
Repeated samples of one model (Self-MoA) are sent as independent requests, as over any
OpenAI-compatible API.
"""

from __future__ import annotations

import pprint
import re

from ..errors import ConfigError
from ..preset import PresetFile, moa_search_version

_MARKER = re.compile(r"__(PRESET|NAME|VERSION|SUMMARY|NUMBERS|KEYS|FILE)__")

_TEMPLATE = r'''#!/usr/bin/env python3
"""Mixture-of-Agents preset __NAME__, exported by moa_search __VERSION__.

__SUMMARY__
__NUMBERS__
Needs: Python >= 3.9 and httpx (pip install httpx). Keys are read at run time from: __KEYS__.

    python __FILE__ "Your prompt"            (or pipe the prompt on stdin)
    python __FILE__ --json "Your prompt"     (answer, usage and calls as JSON)
    python __FILE__ --base-url http://127.0.0.1:8000/v1 "Your prompt"   (or set MOA_BASE_URL)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from urllib.parse import urlsplit

import httpx

PRESET = __PRESET__

RETRY_STATUSES = {408, 409, 429, 500, 502, 503, 504}


class CallFailed(Exception):
    pass


def inject_references(messages, references):
    """The aggregate-and-synthesize system message, as the reference MoA builds it."""
    if not references:
        return messages
    system = PRESET["prompt_template"]["text"]
    for i, reference in enumerate(references, start=1):
        system += "\n%d. %s" % (i, reference)
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": messages[0]["content"] + "\n\n" + system}] + messages[1:]
    return [{"role": "system", "content": system}] + messages


def agent_messages(agent, prompt, references):
    base = list(prompt)
    if agent.get("system_prompt"):
        if base and base[0]["role"] == "system":
            base = [{"role": "system", "content": agent["system_prompt"] + "\n\n" + base[0]["content"]}] + base[1:]
        else:
            base = [{"role": "system", "content": agent["system_prompt"]}] + base
    return inject_references(base, references)


def is_loopback(url):
    host = (urlsplit(url).hostname or "").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def endpoint_for(model, base_url_override):
    entry = PRESET["models"][model]
    base_url = (base_url_override or entry["base_url"]).rstrip("/")
    env = entry["api_key_env"]
    key = os.environ.get(env) if env else None
    if env and not key and not is_loopback(base_url):
        raise SystemExit("error: set $%s (the API key for %s)" % (env, base_url))
    return base_url, key


async def call(client, agent, messages, opts, calls, layer, role):
    model = agent["model"]
    base_url, key = endpoint_for(model, opts.base_url)
    headers = {"Authorization": "Bearer " + key} if key else {}
    body = {"model": model, "messages": messages, "temperature": agent["temperature"],
            "max_tokens": agent["max_tokens"]}
    started = time.monotonic()
    error = None
    attempts = 1 + max(0, opts.retries)
    for attempt in range(attempts):
        try:
            response = await client.post(base_url + "/chat/completions", json=body, headers=headers)
        except httpx.HTTPError as exc:
            error = "%s: %s" % (type(exc).__name__, exc)
        else:
            if response.status_code == 200:
                try:
                    data = response.json()
                    text = data["choices"][0]["message"]["content"]
                    if not isinstance(text, str):
                        raise TypeError("content is not a string")
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    error = "malformed reply (%s)" % exc
                else:
                    usage = data.get("usage") or {}
                    p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
                    price = PRESET["models"][model]
                    known = isinstance(p, int) and isinstance(c, int)
                    calls.append({"layer": layer, "role": role, "model": model, "ok": True,
                                  "prompt_tokens": p if known else 0,
                                  "completion_tokens": c if known else 0,
                                  "usage_reported": known,
                                  "cost_usd": ((p * price["input_price"] + c * price["output_price"]) / 1e6
                                               if known else 0.0),
                                  "latency_s": round(time.monotonic() - started, 3)})
                    return text.strip()
            else:
                error = "HTTP %d: %s" % (response.status_code, response.text[:300])
                if response.status_code not in RETRY_STATUSES:
                    break
        if attempt + 1 < attempts:
            await asyncio.sleep(min(2.0 ** attempt, 8.0))
    calls.append({"layer": layer, "role": role, "model": model, "ok": False, "error": error})
    raise CallFailed("%s: %s" % (model, error))


async def run_moa(prompt, opts):
    config = PRESET["config"]
    calls = []
    references = []
    async with httpx.AsyncClient(timeout=opts.timeout) as client:
        for i, layer in enumerate(config["layers"]):
            results = await asyncio.gather(
                *(call(client, a, agent_messages(a, prompt, references), opts, calls, i, "proposer")
                  for a in layer),
                return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException) and not isinstance(r, CallFailed):
                    raise r
            ok = [r for r in results if isinstance(r, str)]
            if not ok:
                raise CallFailed("every proposer in layer %d failed: %s"
                                 % (i + 1, "; ".join(str(r) for r in results)))
            references = ok
        agg = config["aggregator"]
        answer = await call(client, agg, agent_messages(agg, prompt, references), opts,
                            calls, len(config["layers"]), "aggregator")
    return answer, calls


def main(argv=None):
    parser = argparse.ArgumentParser(description="Run the Mixture-of-Agents preset %r." % PRESET["name"])
    parser.add_argument("prompt", nargs="?", help="the user prompt (default: read stdin)")
    parser.add_argument("--system", help="an optional system message")
    parser.add_argument("--base-url", default=os.environ.get("MOA_BASE_URL"),
                        help="send every model to this OpenAI-compatible endpoint (env MOA_BASE_URL)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per call (default 120)")
    parser.add_argument("--retries", type=int, default=2,
                        help="retries per call on 429, 5xx and network errors (default 2)")
    parser.add_argument("--json", action="store_true", help="print answer, usage and calls as JSON")
    args = parser.parse_args(argv)
    prompt = args.prompt if args.prompt not in (None, "-") else sys.stdin.read()
    if not prompt.strip():
        parser.error("empty prompt")
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + \
        [{"role": "user", "content": prompt}]
    for model in sorted(PRESET["models"]):  # fail on a missing key before spending anything
        endpoint_for(model, args.base_url)
    try:
        answer, calls = asyncio.run(run_moa(messages, args))
    except CallFailed as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 1
    done = [c for c in calls if c["ok"]]
    usage = {"prompt_tokens": sum(c["prompt_tokens"] for c in done),
             "completion_tokens": sum(c["completion_tokens"] for c in done)}
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    cost = sum(c["cost_usd"] for c in done)
    complete = all(c["usage_reported"] for c in done)
    if args.json:
        print(json.dumps({"preset": PRESET["name"], "config_hash": PRESET["config_hash"],
                          "answer": answer, "usage": usage, "cost_usd": cost,
                          "usage_complete": complete, "calls": calls}, indent=2))
    else:
        print(answer)
        print("usage: %d calls (%d failed), prompt_tokens=%d completion_tokens=%d total_tokens=%d, "
              "cost_usd=%.6f at list prices%s"
              % (len(calls), len(calls) - len(done), usage["prompt_tokens"], usage["completion_tokens"],
                 usage["total_tokens"], cost, "" if complete else " (some replies had no usage: a lower bound)"),
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def to_standalone_script(preset: PresetFile, *, filename: str = "moa_preset.py") -> str:
    """The script's text; ``filename`` is only used in its usage notes."""
    if preset.config.prompt_style != "moa":  # the script builds the MoA messages only
        raise ConfigError(f"the standalone script sends the MoA prompts only, not prompt_style "
                          f"{preset.config.prompt_style!r}; export it with --format archon",
                          field="prompt_style")
    data = preset.to_dict()
    embedded = {k: data[k] for k in ("format", "name", "config", "config_hash", "prompt_template")}
    # the simulated world's profiles mean nothing to a script that calls real endpoints
    embedded["models"] = {mid: {k: v for k, v in entry.items() if k != "sim"}
                          for mid, entry in data["models"].items()}
    keys = sorted({m.api_key_env for m in preset.models if m.api_key_env})
    prov = preset.provenance
    if prov is None:
        numbers = "No measured numbers were recorded with this preset."
    else:
        numbers = (f"Measured on {prov.validation_set} ({prov.n_items} items, scorer {prov.scorer}): "
                   f"quality {prov.quality:.4g} [{prov.quality_ci[0]:.4g}, {prov.quality_ci[1]:.4g}], "
                   f"${prov.cost_usd_per_item:.5f}/item, latency p50 {prov.latency_p50_s:.2f} s."
                   + (" THESE NUMBERS COME FROM THE SIMULATED MODEL WORLD, not real models."
                      if prov.simulated else ""))
    summary = f"{preset.config.summary()} (config {preset.config_hash})."
    if preset.description:
        summary = f"{preset.description}\n{summary}"
    replacements = {
        "__PRESET__": pprint.pformat(embedded, indent=1, width=100, sort_dicts=False),
        "__NAME__": preset.name,
        "__VERSION__": prov.moa_search_version if prov else moa_search_version(),
        "__SUMMARY__": _docstring_safe(summary),
        "__NUMBERS__": _docstring_safe(numbers),
        "__KEYS__": ", ".join(f"${k}" for k in keys) or "(none: keyless endpoints)",
        "__FILE__": filename,
    }
    # one pass, so text inside the preset (a description, a prompt) is never taken for a marker
    return _MARKER.sub(lambda m: replacements[m.group(0)], _TEMPLATE)


def _docstring_safe(text: str) -> str:
    """Text placed in the script's docstring must not end it or start an escape."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')

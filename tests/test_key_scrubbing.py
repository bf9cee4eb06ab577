"""API keys never leave through upstream text: a server that echoes the key — in a 200 body
carrying an error object, in a 4xx body, in a reason phrase, in an answer — has it masked before
it is printed, stored (the call store's error column, the SQLite file itself), listed by
``calls --json`` or forwarded in ``serve``'s 502 body. And ``api_key_env`` must be a variable
*name*. Real HTTP to scripted servers on 127.0.0.1, real SQLite files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from moa_search.catalog import Catalog
from moa_search.cli import main
from moa_search.config import MoAConfig
from moa_search.errors import ConfigError
from moa_search.keys import remember, scrub, scrub_content
from moa_search.preset import from_config, preset_catalog
from moa_search.providers.base import ChatRequest, Message, ProviderError
from moa_search.providers.openai_compat import OpenAICompatProvider
from moa_search.runner import Runner
from moa_search.server import create_server_app
from moa_search.store import CallStore
from tests.scripted_http import Reply, ScriptedServer, chat_body
from tests.test_server import ServerThread

SECRET = "sk-live-ECHOED-7c1d93be55"
OTHER_SECRET = "tg-OTHER-ENDPOINT-0a9f3e11"
KEY_ENV, OTHER_ENV = "MOA_SCRUB_TEST_KEY", "MOA_SCRUB_OTHER_KEY"

ECHOES = {
    "200 with an error object": Reply(body={"error": {"message": f"Invalid key {SECRET} for this org"}}),
    "401 JSON error": Reply(status=401, body={"error": {"message": f"Incorrect API key provided: {SECRET}"}}),
    "400 plain text": Reply(status=400, body=f"bad request from key {SECRET}"),
    "429 detail": Reply(status=429, body={"detail": f"quota of {SECRET} exceeded"}),
    "403 reason phrase only": Reply(status=403, body="", reason=f"Forbidden for {SECRET}"),
    "masked tail": Reply(status=401, body={"error": {"message": f"key sk-...{SECRET[-4:]} revoked"}}),
    "another endpoint's key": Reply(status=401, body={"error": {"message": f"did you mean {OTHER_SECRET}?"}}),
}


def two_endpoint_catalog(base_url: str) -> Catalog:
    return Catalog.from_dict({
        "providers": {"echo": {"base_url": base_url, "api_key_env": KEY_ENV},
                      "other": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": OTHER_ENV}},
        "models": {"m/a": {"provider": "echo", "input_price": 1, "output_price": 1},
                   "m/b": {"provider": "other", "input_price": 1, "output_price": 1}}}, source="<test>")


def http_provider(base_url: str) -> OpenAICompatProvider:
    return OpenAICompatProvider(two_endpoint_catalog(base_url), max_retries=0, backoff_base_s=0.01,
                                env={KEY_ENV: SECRET, OTHER_ENV: OTHER_SECRET})


def request(text: str = "hi") -> ChatRequest:
    return ChatRequest("m/a", (Message("user", text),))


def assert_clean(text: str) -> None:
    assert SECRET not in text and OTHER_SECRET not in text and SECRET[-4:] not in text


@pytest.mark.parametrize("name", list(ECHOES))
async def test_an_echoed_key_never_reaches_the_error(name: str) -> None:
    with ScriptedServer(lambda b, h: ECHOES[name]) as server:
        p = http_provider(server.base_url)
        try:
            with pytest.raises(ProviderError) as info:
                await p.complete(request())
        finally:
            await p.aclose()
        assert server.requests[0][1]["authorization"] == f"Bearer {SECRET}"  # the key was really sent
    assert_clean(str(info.value))
    assert "***" in str(info.value)


async def test_an_echoed_key_in_an_answer_is_masked_and_nothing_else_changes() -> None:
    content = f"Your key is {SECRET}; the year 2024 ends in {SECRET[-4:]}."
    with ScriptedServer(lambda b, h: Reply(body=chat_body("m/a", content))) as server:
        p = http_provider(server.base_url)
        try:
            c = await p.complete(request())
        finally:
            await p.aclose()
    # an answer keeps every other byte: a standalone last-four is masked only in diagnostics
    assert c.text == f"Your key is ***; the year 2024 ends in {SECRET[-4:]}."


@pytest.mark.parametrize("name", ["200 with an error object", "401 JSON error", "400 plain text"])
def test_cli_output_store_file_and_calls_json_stay_clean(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    store = tmp_path / "calls.db"
    with ScriptedServer(lambda b, h: ECHOES[name]) as server:
        cat = tmp_path / "cat.toml"
        cat.write_text(f'[providers.echo]\nbase_url = "{server.base_url}"\napi_key_env = "{KEY_ENV}"\n'
                       '[models."m/a"]\nprovider = "echo"\ninput_price = 1\noutput_price = 1\n')
        config = tmp_path / "c.json"
        config.write_text(json.dumps({"aggregator": "m/a"}))
        code = main(["run", "--config", str(config), "--catalog", str(cat), "--backend", "http",
                     "--retries", "0", "--store", str(store), "--prompt", "hi"])
        run_out = capsys.readouterr()
    assert code == 1 and "***" in run_out.err
    assert main(["calls", "--store", str(store), "--json"]) == 0
    listed = capsys.readouterr().out
    [row] = json.loads(listed)["calls"]
    assert row["error"] and "***" in row["error"]
    for text in (run_out.out, run_out.err, listed):
        assert_clean(text)
    for f in tmp_path.glob("calls.db*"):  # the database and its WAL, byte for byte
        assert SECRET.encode() not in f.read_bytes()


def test_serve_forwards_no_key_in_its_502_body(tmp_path: Path) -> None:
    with ScriptedServer(lambda b, h: ECHOES["200 with an error object"]) as upstream:
        preset = from_config("echo", MoAConfig.single("m/a"), two_endpoint_catalog(upstream.base_url))
        provider = OpenAICompatProvider(preset_catalog(preset), max_retries=0,
                                        env={KEY_ENV: SECRET, OTHER_ENV: OTHER_SECRET})
        store = CallStore(tmp_path / "calls.db")
        with ServerThread(create_server_app(preset, lambda: Runner(provider, store))) as s:
            r = httpx.post(f"{s.base_url}/chat/completions", timeout=20,
                           json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
        assert upstream.requests, "the upstream was really called"
        [row] = store.calls()
        store.close()
    assert r.status_code == 502 and "***" in r.text
    assert_clean(r.text)
    assert row.error is not None and "***" in row.error and SECRET not in row.error


class LeakyProvider:
    """Test double, named as such: a provider whose own error text carries a key, to show the
    store and the server mask what any provider lets through."""

    catalog = None

    def endpoint_identity(self, model: str) -> str:
        return "test-double:leaky"

    async def complete(self, request: ChatRequest) -> Any:
        raise ProviderError(f"upstream said {SECRET}", status=500)

    async def aclose(self) -> None:
        pass


async def test_store_and_server_mask_keys_whatever_the_provider(tmp_path: Path) -> None:
    remember(SECRET)
    store = CallStore(tmp_path / "calls.db")
    with pytest.raises(ProviderError):
        await store.complete(LeakyProvider(), request(), role="proposer")
    [row] = store.calls()
    store.close()
    assert row.error == "ProviderError: upstream said ***"
    preset = from_config("leaky", MoAConfig.single("gpt-4o-2024-05-13"), Catalog.default())
    with ServerThread(create_server_app(preset, lambda: Runner(LeakyProvider()))) as s:
        r = httpx.post(f"{s.base_url}/chat/completions", timeout=20,
                       json={"model": "leaky", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 502 and SECRET not in r.text and "upstream said ***" in r.text


def test_short_values_are_not_remembered() -> None:
    remember("local")  # a placeholder key of a local server: masking it would rewrite answers
    assert scrub_content("a local model") == "a local model"
    assert scrub("quota for local", "local") == "quota for ***"  # an explicit secret is always masked


# ---- api_key_env is a name ---------------------------------------------------------------------

@pytest.mark.parametrize("value", ["sk-live-abcdef1234567890", "MY KEY", "1ABC", "export FOO"])
def test_api_key_env_must_be_a_variable_name(tmp_path: Path, value: str) -> None:
    path = tmp_path / "cat.toml"
    path.write_text(f'[providers.p]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "{value}"\n'
                    '[models."m/a"]\nprovider = "p"\ninput_price = 1\noutput_price = 1\n')
    with pytest.raises(ConfigError) as info:
        Catalog.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: providers.p.api_key_env: expected the NAME of an environment variable")
    assert value not in message


def test_api_key_env_flag_with_a_key_is_refused_without_echo(capsys: pytest.CaptureFixture[str]) -> None:
    key = "sk-pasted-by-mistake-99aa77"
    code = main(["run", "--preset", "moa-lite", "--backend", "http", "--base-url", "http://127.0.0.1:9/v1",
                 "--api-key-env", key, "--prompt", "hi", "--no-store"])
    captured = capsys.readouterr()
    assert code == 2 and "--api-key-env: expected the NAME" in captured.err
    assert key not in captured.err + captured.out

"""Request rules per model: what goes into the body, the family defaults, the adaptation to a
server that answers like OpenAI's reasoning models (a real loopback HTTP server), and the study
refusal for a temperature search over a default-only model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from moa_search.catalog import Catalog, RequestRules, family_rules
from moa_search.cli import main
from moa_search.config import MoAConfig
from moa_search.errors import ConfigError
from moa_search.providers.base import ChatRequest, Message, ProviderError
from moa_search.providers.openai_compat import OpenAICompatProvider, adapt_rules, request_body
from moa_search.study_spec import load_study_spec
from tests.scripted_http import Reply, ScriptedServer, chat_body

# OpenAI's own wording for these refusals (recorded from its API documentation and forums)
MAX_TOKENS_400 = {"error": {"message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
                                       "Use 'max_completion_tokens' instead.", "type": "invalid_request_error",
                            "param": "max_tokens", "code": "unsupported_parameter"}}
TEMPERATURE_400 = {"error": {"message": "Unsupported value: 'temperature' does not support 0.7 with this model. "
                                        "Only the default (1) value is supported.", "type": "invalid_request_error",
                             "param": "temperature", "code": "unsupported_value"}}


def reasoning_model(body: dict[str, Any], headers: dict[str, str]) -> Reply:
    """Answers like OpenAI's o-series: max_tokens and a non-default temperature are refused."""
    if "max_tokens" in body:
        return Reply(400, MAX_TOKENS_400)
    if body.get("temperature", 1) != 1:
        return Reply(400, TEMPERATURE_400)
    if "max_completion_tokens" not in body:
        return Reply(400, {"error": {"message": "max_completion_tokens is required by this test server"}})
    return Reply(200, chat_body(body["model"], "reasoned"))


def catalog(base_url: str, **entry: Any) -> Catalog:
    return Catalog.from_dict({"providers": {"p": {"base_url": base_url}},
                              "models": {"lab/reasoner": {"provider": "p", "input_price": 2.0, "output_price": 8.0,
                                                          **entry}}}, source="<test catalog>")


def ask(model: str = "lab/reasoner", temperature: float = 0.7) -> ChatRequest:
    return ChatRequest(model=model, messages=(Message("system", "Be brief."), Message("user", "hi")),
                       temperature=temperature, max_tokens=64)


def test_family_defaults_and_catalog_overrides() -> None:
    assert family_rules("o3-mini") == RequestRules("max_completion_tokens", "default-only", True)
    assert family_rules("gpt-5.1") == family_rules("openai/gpt-5-mini") == family_rules("o3-mini")
    assert family_rules("o1-mini").system_role is False
    assert family_rules("gpt-4o") == family_rules("openrouter/omni-70b") == RequestRules()
    cat = Catalog.from_dict({"providers": {"p": {"base_url": "http://127.0.0.1:1/v1"}}, "models": {
        "o3": {"provider": "p", "input_price": 2, "output_price": 8, "temperature": "any"},
        "x": {"provider": "p", "input_price": 1, "output_price": 1, "max_tokens_field": "max_completion_tokens",
              "system_role": False}}}, source="<t>")
    assert cat.get("o3").rules == RequestRules("max_completion_tokens", "any", True)
    assert cat.get("x").rules == RequestRules("max_completion_tokens", "any", False)


@pytest.mark.parametrize("entry, field", [({"temperature": "hot"}, "temperature"),
                                          ({"max_tokens_field": "max_output"}, "max_tokens_field"),
                                          ({"system_role": "no"}, "system_role")])
def test_bad_rule_values_name_the_field(entry: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=rf'models\."lab/reasoner"\.{field}'):
        catalog("http://127.0.0.1:1/v1", **entry)


def test_body_follows_the_rules() -> None:
    plain = request_body(ask(), RequestRules())
    assert plain["max_tokens"] == 64 and plain["temperature"] == 0.7 and plain["messages"][0]["role"] == "system"
    strict = request_body(ask(), RequestRules("max_completion_tokens", "default-only", False))
    assert "max_tokens" not in strict and strict["max_completion_tokens"] == 64 and "temperature" not in strict
    assert strict["messages"] == [{"role": "user", "content": "Be brief.\n\nhi"}]


def test_only_a_refusal_naming_a_rule_adapts() -> None:
    message = MAX_TOKENS_400["error"]["message"]
    assert adapt_rules(RequestRules(), message) == RequestRules(max_tokens_field="max_completion_tokens")
    assert adapt_rules(RequestRules("max_completion_tokens"), message) is None  # already adapted: an error
    assert adapt_rules(RequestRules(), "temperature must be a number in 0 .. 2") is None  # a bad value
    assert adapt_rules(RequestRules(), "Unsupported value: 'messages[0].role' does not support 'system' "
                                       "with this model.") == RequestRules(system_role=False)


async def test_provider_adapts_once_to_a_reasoning_model_server(caplog: pytest.LogCaptureFixture) -> None:
    with ScriptedServer(reasoning_model) as server:
        provider = OpenAICompatProvider(catalog(server.base_url), max_retries=0)
        try:
            with caplog.at_level(logging.WARNING, logger="moa_search.providers.openai_compat"):
                first = await provider.complete(ask())
                second = await provider.complete(ask(temperature=0.2))
        finally:
            await provider.aclose()
    assert first.text == second.text == "reasoned"
    assert first.cost_usd == pytest.approx((7 * 2.0 + 3 * 8.0) / 1e6)
    sent = [body for body, _ in server.requests]
    # 400 on max_tokens, 400 on temperature, then accepted; the second call goes straight through
    assert [("max_tokens" in b, "temperature" in b) for b in sent] == [(True, True), (False, True),
                                                                        (False, False), (False, False)]
    limits = provider._limits[server.base_url.rstrip("/")]
    assert limits.adapted_rules["lab/reasoner"] == RequestRules("max_completion_tokens", "default-only", True)
    told = [r.getMessage() for r in caplog.records if "refused a request" in r.getMessage()]
    assert len(told) == 2 and "max_tokens_field = 'max_completion_tokens'" in told[0]


async def test_known_family_needs_no_adaptation_and_other_400s_stay_errors() -> None:
    with ScriptedServer(reasoning_model) as server:
        cat = Catalog.from_dict({"providers": {"p": {"base_url": server.base_url}},
                                 "models": {"o3-mini": {"provider": "p", "input_price": 1.1, "output_price": 4.4}}},
                                source="<t>")
        provider = OpenAICompatProvider(cat, max_retries=0)
        try:
            assert (await provider.complete(ask("o3-mini"))).text == "reasoned"
            assert len(server.requests) == 1
        finally:
            await provider.aclose()
    with ScriptedServer(lambda body, headers: Reply(400, {"error": {"message": "prompt too long"}})) as server:
        provider = OpenAICompatProvider(catalog(server.base_url), max_retries=0)
        try:
            with pytest.raises(ProviderError, match="prompt too long"):
                await provider.complete(ask())
        finally:
            await provider.aclose()
    assert len(server.requests) == 1


def test_cli_run_succeeds_against_a_reasoning_model_server(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(MoAConfig.single("lab/reasoner", temperature=0.7, max_tokens=64).to_dict()))
    with ScriptedServer(reasoning_model) as server:
        cat = tmp_path / "catalog.toml"
        cat.write_text(f'[providers.p]\nbase_url = "{server.base_url}"\n\n[models."lab/reasoner"]\n'
                       'provider = "p"\ninput_price = 2.0\noutput_price = 8.0\n')
        code = main(["run", "--prompt", "hi", "--config", str(config), "--catalog", str(cat), "--backend", "http",
                     "--no-store", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["answer"] == "reasoned" and out["error"] is None
    assert len(server.requests) == 3  # two refusals adapted to, then the answer


def test_study_refuses_a_temperature_search_over_a_default_only_model(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "catalog.toml").write_text('[providers.p]\nbase_url = "http://127.0.0.1:1/v1"\n\n'
                                           '[models."lab/reasoner"]\nprovider = "p"\ninput_price = 2.0\n'
                                           'output_price = 8.0\ntemperature = "default-only"\n')
    study = tmp_path / "study.toml"
    text = ('[study]\nname = "t"\nbackend = "http"\n[catalog]\npath = "catalog.toml"\n[data]\nbuiltin = "math"\n'
            '[scorer]\nname = "numeric"\n[space]\nmodels = ["lab/reasoner"]\naggregators = ["lab/reasoner"]\n'
            'layers = [1, 1]\ntemperatures = [TEMPS]\n[objectives]\nmetrics = ["quality"]\n[budget]\ntrials = 2\n')
    study.write_text(text.replace("TEMPS", "0.2, 0.7"))
    assert main(["study", "run", str(study)]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "space.temperatures" in error and "'lab/reasoner' takes only its default" in error
    study.write_text(text.replace("TEMPS", "0.7"))  # one value: nothing is searched, the study loads
    assert load_study_spec(study).space.temperatures == (0.7,)

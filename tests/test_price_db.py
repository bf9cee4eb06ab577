"""Prices from the installed genai-prices database (offline), catalog entries priced from it, and
`moa-search catalog list/add/check` end to end."""

from __future__ import annotations

import re

import socket
from importlib.metadata import version
from pathlib import Path

import pytest

from moa_search import price_db
from moa_search.catalog import CATALOG_PRICE, Catalog
from moa_search.cli import main
from moa_search.errors import ConfigError
from moa_search.preset import PresetModel

SOURCE = f"genai-prices {version('genai-prices')}"
LLAMA = "meta-llama/Llama-3.3-70B-Instruct-Turbo"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A guard, not a stand-in: any attempt to open a connection fails the test."""
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the price database tried to use the network")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_lookups_read_the_installed_data_offline(no_network: None) -> None:
    llama = price_db.lookup("together", LLAMA)
    assert (llama.input_price, llama.output_price, llama.source) == (0.88, 0.88, SOURCE)
    gpt4o = price_db.lookup("openai", "gpt-4o")
    assert (gpt4o.input_price, gpt4o.output_price, gpt4o.cached_input_price) == (2.5, 10.0, 1.25)
    assert gpt4o.context_window == 128_000
    # the database matches model ids case-insensitively, and by the endpoint's URL when the
    # catalog names its provider differently
    assert price_db.lookup("my-together", LLAMA.lower(), base_url="https://api.together.xyz/v1").model == LLAMA
    o3 = price_db.lookup("openai", "o3")
    assert o3.effective and o3.label == f"{SOURCE}, effective {o3.effective}"
    with pytest.raises(ConfigError, match="unknown provider 'nowhere'"):
        price_db.lookup("nowhere", "x")
    with pytest.raises(ConfigError, match="model 'not/a-model' has no token prices at provider 'together'"):
        price_db.lookup("together", "not/a-model")


def test_known_providers_all_have_models() -> None:
    counts = price_db.count_by_provider()
    assert set(counts) == {"together", "openai", "groq", "fireworks", "openrouter", "deepseek", "mistral"}
    assert all(n > 0 for n in counts.values())
    assert all(q.provider == "together" and "llama" in q.model.lower()
               for q in price_db.models("together", "LLAMA"))


CATALOG = """
[providers.together]
base_url = "https://api.together.xyz/v1"
[models."{model}"]
provider = "together"
{prices}
"""


@pytest.mark.parametrize("prices", ['price = "genai-prices"', ""])
def test_catalog_entry_priced_from_the_database(prices: str) -> None:
    cat = Catalog.from_toml_text(CATALOG.format(model=LLAMA, prices=prices), source="c.toml")
    info = cat.get(LLAMA)
    assert (info.input_price, info.output_price, info.price_source) == (0.88, 0.88, SOURCE)
    preset = PresetModel.from_model_info(info).to_dict()
    assert preset["price_source"] == SOURCE and preset["input_price"] == 0.88


def test_typed_prices_win_and_the_paper_catalog_stays_typed() -> None:
    cat = Catalog.from_toml_text(CATALOG.format(model=LLAMA, prices="input_price = 0.5\noutput_price = 0.6"),
                                 source="c.toml")
    assert (cat.get(LLAMA).input_price, cat.get(LLAMA).price_source) == (0.5, CATALOG_PRICE)
    paper = Catalog.default()
    assert {m.price_source for m in paper.models.values()} == {CATALOG_PRICE}
    assert paper.get("mistralai/Mixtral-8x22B-Instruct-v0.1").input_price == 1.2  # the 2024 price


@pytest.mark.parametrize("model, prices, message", [
    (LLAMA, 'price = "genai-prices"\ninput_price = 1\noutput_price = 1', "not both"),
    (LLAMA, 'price = "cheap"', r'models\."meta-llama/Llama-3.3-70B-Instruct-Turbo"\.price: expected "genai-prices"'),
    ("lab/private-model", "", r'models\."lab/private-model": no price: model .* give input_price and output_price'),
])
def test_bad_price_entries_are_one_line(model: str, prices: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Catalog.from_toml_text(CATALOG.format(model=model, prices=prices), source="c.toml")
    assert "\n" not in str(info.value) and "c.toml" in str(info.value)


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, list[str], list[str]]:
    code = main(["catalog", *args])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err.splitlines()


def test_add_list_check_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "current.toml"
    code, out, _ = run(capsys, "add", f"together:{LLAMA}", "openai:gpt-4o", "--catalog", str(path),
                       "--context-window", "131072")
    assert code == 0 and out == [f"{path}: added 2 model(s)"]
    cat = Catalog.load(path)
    assert cat.endpoints["openai"].api_key_env == "OPENAI_API_KEY"
    assert cat.endpoints["together"].base_url == "https://api.together.xyz/v1"
    assert (cat.get("gpt-4o").input_price, cat.get("gpt-4o").context_window) == (2.5, 128_000)  # database's window
    assert (cat.get(LLAMA).output_price, cat.get(LLAMA).context_window) == (0.88, 131072)  # the flag's

    code, _, err = run(capsys, "add", "openai:gpt-4o", "--catalog", str(path))
    assert code == 0 and err == [f"note: 'gpt-4o' is already in {path}; left as it is"]
    assert path.read_text().count('[models."gpt-4o"]') == 1

    code, out, _ = run(capsys, "list", "--provider", "openai", "--search", "gpt-4o", "--catalog", str(path))
    assert code == 0 and all(len(line) <= 80 for line in out)
    marked = [line.split()[2] for line in out[1:-1] if line.startswith("*")]
    assert marked == ["gpt-4o"] and out[-1].endswith(SOURCE)
    # the built-in catalog's dated id gpt-4-turbo-2024-04-09 is the database's gpt-4-turbo
    code, out, _ = run(capsys, "list", "--provider", "openai", "--search", "gpt-4-turbo")
    assert code == 0 and [line.split()[2] for line in out[1:-1] if line.startswith("*")] == ["gpt-4-turbo"]

    code, out, _ = run(capsys, "check", "--catalog", str(path))  # priced from the database: nothing to differ
    assert code == 0 and out[-1].startswith("0 of 2 models differ")


def test_check_lists_changed_prices_and_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "old.toml"
    path.write_text(CATALOG.format(model=LLAMA, prices="input_price = 0.88\noutput_price = 0.5")
                    + '[models."lab/private"]\nprovider = "together"\ninput_price = 1\noutput_price = 1\n')
    code, out, _ = run(capsys, "check", "--catalog", str(path))
    assert code == 1 and all(len(line) <= 80 for line in out)
    assert [line.split() for line in out[1:-1]] == [[LLAMA, "output", "0.5", "0.88", "+76%"],
                                                    ["lab/private", "1", "-", "unknown"]]
    code, out, _ = run(capsys, "check", "--catalog", str(path), "--threshold", "0.8")
    assert code == 1 and len(out) == 3  # only the unknown model is left
    code, out, _ = run(capsys, "check", "--catalog", "moa_search/data/catalog.toml")
    assert code == 1 and any(line.split()[:2] == ["mistralai/Mixtral-8x22B-Instruct-v0.1", "input"] for line in out)


@pytest.mark.parametrize("args, code, message", [
    (["nowhere:x"], 2, "error: unknown provider 'nowhere'; catalog add knows: together, openai"),
    (["together:not/a-model"], 1, "error: model 'not/a-model' has no token prices at provider 'together'"),
    ([f"together:{LLAMA}"], 2, "error: Invalid value for PROVIDER:MODEL / --context-window: genai-prices"),
    (["gpt-4o"], 2, "error: Invalid value for PROVIDER:MODEL / --context-window: expected PROVIDER:MODEL"),
])
def test_bad_add_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str], code: int,
                                   message: str) -> None:
    path = tmp_path / "c.toml"
    got, _, err = run(capsys, "add", *args, "--catalog", str(path))
    assert got == code and err[0].startswith(message) and not path.exists()
    assert len(err) == (2 if code == 2 and "Invalid value" in message else 1)  # usage errors add the hint


def test_shipped_current_catalog_is_what_its_commands_write(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    shipped = Path(__file__).parent.parent / "catalogs" / "current.toml"
    commands = [line.removeprefix("#   moa-search ").split() for line in shipped.read_text().splitlines()
                if line.startswith("#   moa-search catalog add ")]
    assert len(commands) == 2
    for words in commands:
        words[words.index("--catalog") + 1] = str(tmp_path / "current.toml")
        assert main(words) == 0
    capsys.readouterr()
    fresh, current = Catalog.load(tmp_path / "current.toml"), Catalog.load(shipped)
    assert len(current.models) == 13 and list(fresh.models) == list(current.models)
    for model_id, info in current.models.items():
        assert (info.context_window, info.endpoint) == (
            fresh.get(model_id).context_window, fresh.get(model_id).endpoint)
        assert info.price_source == SOURCE
    # the prices written into the shipped file's comments are the ones the database gives now
    # (both catalogs look their prices up at load, so comparing the loaded prices proves nothing)
    def written(text: str) -> dict[str, str]:
        found = re.findall(r'\[models\."([^"]+)"\]\nprovider = "[^"]+"\nprice = "genai-prices"  # (.*?), looked up', text)
        return dict(found)
    shipped_prices = written(shipped.read_text())
    assert len(shipped_prices) == 13 and shipped_prices == written((tmp_path / "current.toml").read_text())
    for model_id, info in current.models.items():
        assert f"${info.input_price:g} / ${info.output_price:g} per 1M tokens" in shipped_prices[model_id]
    assert current.get("gpt-5").rules.max_tokens_field == "max_completion_tokens"


def test_a_time_of_day_price_does_not_move_with_the_hour() -> None:
    """DeepSeek is half price 16:30-00:30 UTC in the database; a catalog loaded at 00:10 or at
    13:00 must give one price (the standard one), or costs and `catalog check` change by the hour."""
    from datetime import UTC, datetime
    night = price_db.lookup("deepseek", "deepseek-chat", when=datetime(2026, 11, 29, 0, 10, tzinfo=UTC))
    day = price_db.lookup("deepseek", "deepseek-chat", when=datetime(2026, 11, 29, 13, 0, tzinfo=UTC))
    assert (night.input_price, night.output_price) == (day.input_price, day.output_price)
    assert day.input_price == 0.27 and day.output_price == 1.1  # the standard price, not off-peak

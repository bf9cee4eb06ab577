"""Presets carry the catalog's cached-input price (issue 16), with the price source and date, so
a preset run elsewhere charges prompt-cache reads at their price and not the full input price."""

import json

from moa_search.catalog import Catalog
from moa_search.config import MoAConfig
from moa_search.preset import from_config, load_preset, preset_catalog, write_preset

CATALOG_TOML = """
[providers.openai]
base_url = "https://api.openai.com/v1"
api_key_env = "OPENAI_API_KEY"

[models."gpt-4o-mini"]
provider = "openai"
input_price = 0.15
output_price = 0.6
cached_input_price = 0.075
context_window = 128000

[models."gpt-4o"]
provider = "openai"
input_price = 2.5
output_price = 10.0
context_window = 128000
"""


def test_cached_input_price_round_trips_and_prices_cache_reads(tmp_path):
    catalog = Catalog.from_toml_text(CATALOG_TOML, source="cat.toml")
    config = MoAConfig.uniform(["gpt-4o-mini"], "gpt-4o", layers=2)
    path = write_preset(tmp_path / "p.json", from_config("cached", config, catalog))
    raw = json.loads(path.read_text())["models"]
    assert raw["gpt-4o-mini"]["cached_input_price"] == 0.075
    assert "cached_input_price" not in raw["gpt-4o"]  # none known: the input price applies
    assert raw["gpt-4o-mini"]["price_source"] == "catalog"
    back = load_preset(path)
    assert back.to_dict() == from_config("cached", config, catalog).to_dict()
    rebuilt = preset_catalog(back).get("gpt-4o-mini")
    assert rebuilt.cached_input_price == 0.075
    # 1000 prompt tokens of which 800 read from the cache, 100 out
    expected = (200 * 0.15 + 800 * 0.075 + 100 * 0.6) / 1e6
    assert rebuilt.cost(1000, 100, 800) == back.model("gpt-4o-mini").cost(1000, 100, 800) == expected
    assert preset_catalog(back).get("gpt-4o").cost(1000, 100, 800) == (1000 * 2.5 + 100 * 10.0) / 1e6


def test_database_prices_keep_source_date_and_cached_price(tmp_path):
    catalog = Catalog.from_toml_text(CATALOG_TOML.replace(
        'input_price = 0.15\noutput_price = 0.6\ncached_input_price = 0.075\n', 'price = "genai-prices"\n'),
        source="cat.toml")
    info = catalog.get("gpt-4o-mini")
    config = MoAConfig.single("gpt-4o-mini")
    back = load_preset(write_preset(tmp_path / "p.json", from_config("db", config, catalog)))
    model = back.model("gpt-4o-mini")
    assert (model.price_source, model.price_date, model.cached_input_price) == \
           (info.price_source, info.price_date, info.cached_input_price)
    assert model.price_source.startswith("genai-prices") and model.cached_input_price is not None

import pytest

from moa_search.catalog import Catalog
from moa_search.config import builtin_preset, MoAConfig
from moa_search.errors import ConfigError, UnknownModelError


def test_default_catalog_prices_and_presets():
    cat = Catalog.default()
    for preset in ("moa", "moa-gpt4o", "moa-lite"):
        cat.check_config(builtin_preset(preset).config)
    gpt4o = cat.get("gpt-4o-2024-05-13")
    assert gpt4o.endpoint.api_key_env == "OPENAI_API_KEY"
    assert gpt4o.cost(1_000_000, 1_000_000) == pytest.approx(20.0)
    qwen = cat.get("Qwen/Qwen1.5-110B-Chat")
    assert qwen.cost(500, 500) == pytest.approx(1000 * 1.80 / 1e6)
    assert all(m.sim is not None for m in cat.models.values())


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UnknownModelError, match="'nope/model'"):
        Catalog.default().check_config(MoAConfig.single("nope/model"))


def test_base_url_override_keeps_prices():
    cat = Catalog.default().with_base_url("http://127.0.0.1:9999/v1/")
    m = cat.get("databricks/dbrx-instruct")
    assert m.endpoint.base_url == "http://127.0.0.1:9999/v1" and m.input_price == 1.2


def _write(tmp_path, text):
    p = tmp_path / "cat.toml"
    p.write_text(text)
    return p


GOOD_PROVIDER = '[providers.p]\nbase_url = "http://x/v1"\napi_key_env = "K"\n'


@pytest.mark.parametrize("text, fragment", [
    ("this is = = not toml", "not valid TOML"),
    (GOOD_PROVIDER + '[models.m]\nprovider = "q"\ninput_price = 1\noutput_price = 1\n', "unknown provider 'q'"),
    (GOOD_PROVIDER + '[models.m]\nprovider = "p"\ninput_price = "cheap"\noutput_price = 1\n', "input_price"),
    (GOOD_PROVIDER + '[models.m]\nprovider = "p"\ninput_price = -1\noutput_price = 1\n', "input_price"),
    (GOOD_PROVIDER + '[models.m]\nprovider = "p"\ninput_price = 1\n', "output_price"),
    (GOOD_PROVIDER + '[models.m]\nprovider = "p"\ninput_price = 1\noutput_price = 1\ncolour = 2\n', "colour"),
    ('[providers.p]\nbase_url = "ftp://x"\n[models.m]\nprovider = "p"\ninput_price = 1\noutput_price = 1\n', "base_url"),
    (GOOD_PROVIDER, "no models"),
    (GOOD_PROVIDER + '[models.m]\nprovider = "p"\ninput_price = 1\noutput_price = 1\nsim = {skill = 150}\n', "sim.skill"),
])
def test_malformed_catalog_names_file_and_field(tmp_path, text, fragment):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        Catalog.load(path)
    assert str(path) in str(info.value) and fragment in str(info.value)


def test_missing_catalog_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read catalog"):
        Catalog.load(tmp_path / "absent.toml")


@pytest.mark.parametrize("url", ["https://user:sk-secret-123456@api.example.com/v1",
                                 "https://api.example.com/v1?api-key=sk-secret-123456",
                                 "https://api.example.com/v1#sk-secret-123456"])
def test_a_base_url_carrying_credentials_is_refused_without_quoting_it(tmp_path, url):
    path = tmp_path / "cat.toml"
    path.write_text(f'[providers.p]\nbase_url = "{url}"\n\n[models."m"]\nprovider = "p"\n'
                    'input_price = 1.0\noutput_price = 1.0\n', "utf-8")
    with pytest.raises(ConfigError) as err:
        Catalog.load(path)
    assert "providers.p.base_url" in str(err.value) and "sk-secret" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        Catalog.default().with_base_url(url)
    assert "--base-url" in str(err.value) and "sk-secret" not in str(err.value)

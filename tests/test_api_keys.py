"""API keys: sources, rotation by modification time, the constant-time check,
and the ingress middleware's answers (401 with WWW-Authenticate, /health open)."""

import os

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from shardserve.api.contract import KEYS_ENV, KEYS_FILE_ENV
from shardserve.serve.http import api_keys
from shardserve.serve.http.api_keys import KeyStore, bearer_token, key_matches, keys_configured, parse_keys


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_parse_keys_skips_blanks_and_comments():
    assert parse_keys("a\n\n # note\n b \n") == ("a", "b")
    assert parse_keys(" a, ,b ,", separator=",") == ("a", "b")


@pytest.mark.parametrize("header, token", [
    ("Bearer k1", "k1"), ("bearer   k1 ", "k1"), ("Basic k1", None), ("Bearer", None), ("Bearer ", None), ("", None),
    (None, None),
])
def test_bearer_token(header, token):
    assert bearer_token(header) == token


def test_key_matches_any_key_and_nothing_else():
    assert key_matches("b", ("a", "b"))
    assert not key_matches("c", ("a", "b"))
    assert not key_matches("", ("a",))
    assert not key_matches(None, ("a",))
    assert not key_matches("a", ())
    assert not key_matches("\udcff", ("a",))  # undecodable header text does not raise


def test_key_matches_compares_values_of_one_length_whatever_the_keys(monkeypatch):
    """compare_digest's time depends on its inputs' lengths: it only sees digests."""
    compared = []

    def compare_digest(a, b):
        compared.append((len(a), len(b)))
        return a == b

    monkeypatch.setattr(api_keys.hmac, "compare_digest", compare_digest)
    assert key_matches("a-much-longer-key-than-the-other", ("short", "a-much-longer-key-than-the-other"))
    assert not key_matches("x", ("short",))
    assert compared == [(32, 32)] * 3


def test_env_keys():
    store = KeyStore({KEYS_ENV: "k1,k2"})
    assert store.keys() == ("k1", "k2")
    assert keys_configured({KEYS_ENV: "k1"}) and not keys_configured({})


def test_file_keys_rotate_when_the_file_changes_checked_at_most_once_a_second(tmp_path):
    path = tmp_path / "keys"
    path.write_text("old\n")
    clock = Clock()
    store = KeyStore({KEYS_FILE_ENV: str(path)}, clock=clock)
    assert store.keys() == ("old",)
    path.write_text("new1\nnew2\n")
    os.utime(path, ns=(10**18, 10**18))
    clock.now = 0.5
    assert store.keys() == ("old",), "no stat within the interval"
    clock.now = 1.5
    assert store.keys() == ("new1", "new2")


def test_a_missing_file_keeps_the_last_good_keys(tmp_path):
    path = tmp_path / "keys"
    path.write_text("k\n")
    clock = Clock()
    store = KeyStore({KEYS_FILE_ENV: str(path)}, clock=clock)
    path.unlink()
    clock.now = 5
    assert store.keys() == ("k",)


def test_a_mounted_secret_directory_gives_one_key_per_entry(tmp_path):
    # The kubelet's layout: entries are links into a ..data directory it swaps atomically.
    data = tmp_path / "..2026_11_21"
    data.mkdir()
    (data / "alice").write_text("key-a")
    (data / "bob").write_text("key-b\n")
    (tmp_path / "..data").symlink_to(data.name)
    for name in ("alice", "bob"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    clock = Clock()
    store = KeyStore({KEYS_FILE_ENV: str(tmp_path)}, clock=clock)
    assert store.keys() == ("key-a", "key-b")
    (tmp_path / "bob").unlink()
    clock.now = 2
    assert store.keys() == ("key-a",)


def _app(monkeypatch, keys="k1,k2", required=True, max_bytes=4096):
    from shardserve.serve.http.ingress import build_fastapi_app
    from shardserve.serve.http.limits import RequestLimits

    monkeypatch.delenv(KEYS_FILE_ENV, raising=False)
    if keys is None:
        monkeypatch.delenv(KEYS_ENV, raising=False)
    else:
        monkeypatch.setenv(KEYS_ENV, keys)
    app = build_fastapi_app(RequestLimits(max_request_bytes=max_bytes), require_api_key=required)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/echo")
    async def echo(request: Request):
        return {"bytes": len(await request.body())}

    return TestClient(app)


def test_middleware_wants_a_bearer_key_on_v1_and_leaves_health_open(monkeypatch):
    client = _app(monkeypatch)
    assert client.get("/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "k1"}):
        response = client.post("/v1/echo", json={}, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["error"]["type"] == "authentication_error"
    for key in ("k1", "k2"):
        assert client.post("/v1/echo", json={}, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_required_without_any_key_refuses_everything(monkeypatch):
    client = _app(monkeypatch, keys=None)
    assert client.post("/v1/echo", json={}, headers={"Authorization": "Bearer "}).status_code == 401
    assert client.get("/health").status_code == 200


def test_no_spec_secret_and_no_keys_means_open(monkeypatch):
    assert _app(monkeypatch, keys=None, required=False).post("/v1/echo", json={}).status_code == 200


def test_body_size_limit_declared_and_streamed(monkeypatch):
    client = _app(monkeypatch, keys=None, required=False, max_bytes=2048)
    json_type = {"content-type": "application/json"}
    assert client.post("/v1/echo", content=b"x" * 2048, headers=json_type).json() == {"bytes": 2048}
    big = client.post("/v1/echo", json={"a": "x" * 3000})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"

    def chunks():
        yield b'{"a": "'
        yield b"x" * 3000
        yield b'"}'

    assert client.post("/v1/echo", content=chunks(), headers=json_type).status_code == 413


def test_oversized_headers_get_431_before_the_key_check(monkeypatch):
    client = _app(monkeypatch)
    response = client.post("/v1/echo", json={}, headers={"X-Big": "a" * 40_000})
    assert response.status_code == 431 and response.json()["error"]["code"] == "headers_too_large"
    assert client.get("/health", headers={"X-Small": "a" * 1000}).status_code == 200


def test_shardserve_run_refuses_an_api_key_secret_without_local_keys(monkeypatch):
    import io

    from shardserve.api.validation import parse_deployment
    from shardserve.local.run import run_local

    monkeypatch.delenv(KEYS_ENV, raising=False)
    monkeypatch.delenv(KEYS_FILE_ENV, raising=False)
    md = parse_deployment({
        "apiVersion": "shardserve.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "keys"},
        "spec": {"model": {"id": "tiny", "source": "builtin://tiny"}, "resources": {"accelerator": "cpu"},
                 "serving": {"apiKeySecret": "keys"}},
    }, source="test")
    out = io.StringIO()
    assert run_local(md, out=out) == 1
    assert KEYS_ENV in out.getvalue() and KEYS_FILE_ENV in out.getvalue()


def test_keys_carry_their_tenant_names():
    from shardserve.serve.http.api_keys import match_key, parse_named_keys

    entries = parse_named_keys("alice=sk-1, sk-2 ,bob=sk=3,==x", separator=",")
    assert entries == (("alice", "sk-1"), (None, "sk-2"), ("bob", "sk=3"), (None, "==x"))
    assert match_key("sk=3", entries) == (True, "bob")
    assert match_key("sk-2", entries) == (True, None)
    assert match_key("nope", entries) == (False, None) and match_key(None, entries) == (False, None)


def test_a_mounted_secrets_entry_names_its_key(tmp_path):
    from shardserve.api.contract import KEYS_FILE_ENV
    from shardserve.serve.http.api_keys import KeyStore

    (tmp_path / "alice").write_text("sk-a\n")
    (tmp_path / "bob").write_text("sk-b")
    assert KeyStore({KEYS_FILE_ENV: str(tmp_path)}).entries() == (("alice", "sk-a"), ("bob", "sk-b"))

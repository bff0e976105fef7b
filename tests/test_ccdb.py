"""CCDB upload, listing and retrieval: local snapshot and REST against a local server.

Every request goes to the server in ``ccdb_server.py`` on 127.0.0.1 (a guard below fails
any other); no test touches a real CCDB host.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from click.testing import CliRunner

from pid_export import ccdb as lib
from pid_export.cli import main
from pid_export.errors import CCDBError, CCDBUploadError, ConfigError, ContractError, InputError
from pid_export.export import base_metadata, set_metadata

from ccdb_server import CCDBServer

JAN = lib.parse_time("2024-01-01")
FEB = lib.parse_time("2024-02-01")
MAR = lib.parse_time("2024-03-01")
NOW = 1_735_689_600_000  # 2025-01-01 00:00:00 UTC


# --------------------------------------------------------------------------- fixtures


def write_model(path: Path, *, softmax: bool = True, seed: int = 0, kind: str = "xgb") -> Path:
    """A tiny model within the O2 contract: NaN -> 0, MatMul, Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.normal(size=(22, 4)).astype(np.float32), "w")
    zero = numpy_helper.from_array(np.zeros((), np.float32), "zero")
    last = "logits" if softmax else "probabilities"
    nodes = [helper.make_node("IsNaN", ["input"], ["is_nan"]),
             helper.make_node("Where", ["is_nan", "zero", "input"], ["clean"]),
             helper.make_node("MatMul", ["clean", "w"], [last])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 22])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 4])],
        [weights, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    set_metadata(model, {**base_metadata(), "model_kind": kind, "momentum_range": [0.0, 1.0]})
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {"a": write_model(folder / "pid_a.onnx", seed=1),
            "b": write_model(folder / "pid_b.onnx", seed=2, kind="rf"),
            "bad": write_model(folder / "no_softmax.onnx", softmax=False)}


@pytest.fixture(autouse=True)
def fast_and_local(tmp_path, monkeypatch):
    """Short time-outs and back-off; the working dir (hence ./ccdb) inside tmp_path;
    and a guard that fails any request to a host other than 127.0.0.1."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(lib, "DEFAULT_BACKOFF", 0.01)
    monkeypatch.setattr(lib, "DEFAULT_CONNECT_TIMEOUT", 0.5)
    monkeypatch.setattr(lib, "DEFAULT_READ_TIMEOUT", 5.0)
    real_send = requests.Session.send

    def guarded_send(self, request, **kwargs):
        host = urlsplit(request.url).hostname
        assert host == "127.0.0.1", f"test tried to reach {host}"
        return real_send(self, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", guarded_send)


@pytest.fixture
def server():
    with CCDBServer() as srv:
        yield srv


def rest(srv: CCDBServer, **kw) -> lib.RestCCDB:
    opts = {"connect_timeout": 0.5, "read_timeout": 0.5, "retries": 2, "backoff": 0.01}
    return lib.RestCCDB(srv.url, **(opts | kw))


def artefact(path: Path) -> lib.Artefact:
    return lib.prepare_artefact(path)


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("path, expected", [
    ("Users/j/jdoe/PIDML/xgb", "Users/j/jdoe/PIDML/xgb"),
    ("/Users/j/jdoe/PIDML/", "Users/j/jdoe/PIDML"),
    ("EventFiltering/PWGHF/BDTD0", "EventFiltering/PWGHF/BDTD0"),
    ("a_b-c.d/run3x/v1.2", "a_b-c.d/run3x/v1.2"),
])
def test_path_accepted(path, expected):
    assert lib.validate_path(path) == expected


@pytest.mark.parametrize("path, why", [
    ("", "empty"), ("/", "empty"), ("a//b", "empty segment"), ("a/../b", "relative"),
    ("..", "relative"), ("a/./b", "relative"), ("Users/j/jdoe/2024", "all digits"),
    ("a/b c", "characters"), ("a/b?c", "characters"), ("a/b=c", "characters"),
    ("a/caf\u00e9", "characters"), ("a/b\\c", "characters"), ("a/.versions", "hidden"),
    ("browse/x", "endpoint"), ("latest", "endpoint"),
])
def test_path_refused(path, why):
    with pytest.raises(ConfigError, match=why):
        lib.validate_path(path)


def test_metadata_keys_and_values():
    meta = lib.validate_metadata({"period": "LHC23zzh", "model_kind": "xgb", "nTrees": 100,
                                  "range": [0, 1]})
    assert meta == {"period": "LHC23zzh", "model_kind": "xgb", "nTrees": "100", "range": "[0,1]"}
    for key in ["a b", "a.b", "a-b", "a/b", "a=b", "a:b", "", "x!"]:
        with pytest.raises(ConfigError, match="punctuation and spaces"):
            lib.validate_metadata({key: "v"})
    with pytest.raises(ConfigError, match="sets this field itself"):
        lib.validate_metadata({"md5": "x"})
    with pytest.raises(ConfigError, match="empty"):
        lib.validate_metadata({"k": ""})
    with pytest.raises(ConfigError, match="control"):
        lib.validate_metadata({"k": "a\nb"})


def test_meta_options():
    assert lib.parse_meta_options(["a=b=c", "x=1"]) == {"a": "b=c", "x": "1"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        lib.parse_meta_options(["novalue"])
    with pytest.raises(ConfigError, match="twice"):
        lib.parse_meta_options(["a=1", "a=2"])


# --------------------------------------------------------------------------- time


@pytest.mark.parametrize("text, expected", [
    ("now", NOW), ("NOW", NOW), ("+1d", NOW + lib.DAY_MS), ("-12h", NOW - 12 * 3_600_000),
    ("+1y", NOW + 365 * lib.DAY_MS), ("now+2w", NOW + 14 * lib.DAY_MS), ("+30m", NOW + 1_800_000),
    ("+5s", NOW + 5000), ("1735689600000", NOW), ("2025-01-01", NOW),
    ("2025-01-01T00:00:00Z", NOW), ("2025-01-01T01:00:00+01:00", NOW),
    ("2025-01-01 00:00:01", NOW + 1000), (NOW, NOW),
])
def test_parse_time(text, expected):
    assert lib.parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["tomorrow", "+1M", "+1.5d", "", "1d", "2025-13-01", "now+"])
def test_parse_time_refused(text):
    with pytest.raises(ConfigError, match="ISO date"):
        lib.parse_time(text, now=NOW)


def test_seconds_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="pid_export.ccdb"):
        assert lib.parse_time("1735689600", now=NOW) == 1735689600
    assert "looks like seconds" in caplog.text


def test_validity_defaults_and_order():
    assert lib.resolve_validity(now=NOW) == (NOW, NOW + lib.DAY_MS)
    assert lib.resolve_validity("2024-01-01", "+1y", now=NOW) == (JAN, NOW + 365 * lib.DAY_MS)
    assert lib.resolve_validity(1, "2024-02-01", now=NOW) == (1, FEB)
    with pytest.raises(ConfigError, match="must come after"):
        lib.resolve_validity("2024-02-01", "2024-01-01", now=NOW)
    with pytest.raises(ConfigError, match="must come after"):
        lib.resolve_validity("+2d", None, now=NOW)


# --------------------------------------------------------------------------- local snapshot


def test_local_round_trip_keeps_versions(tmp_path, models):
    url = f"file://{tmp_path / 'snap'}"
    first = lib.upload_model(models["a"], "Users/j/jdoe/PIDML", url=url, start="2024-01-01",
                             end="2024-03-01", meta=["period=LHC23zzh"])
    snapshot = tmp_path / "snap/Users/j/jdoe/PIDML/snapshot.root"
    assert snapshot.read_bytes() == models["a"].read_bytes()
    assert first.verified and first.location == str(snapshot)
    assert first.metadata["model_kind"] == "xgb"
    assert first.metadata["momentum_range"] == "[0.0,1.0]"
    assert first.metadata["o2_contract"] == "passed"
    assert first.metadata["period"] == "LHC23zzh"
    assert {"feature_spec_digest", "package_version"} <= first.metadata.keys()

    lib.upload_model(models["b"], "Users/j/jdoe/PIDML", url=url, start="2024-02-01",
                     end="2024-03-01")
    assert snapshot.read_bytes() == models["b"].read_bytes()  # O2's file mode: the last upload
    versions = sorted((snapshot.parent / ".versions").glob("*.onnx"))
    assert [v.read_bytes() for v in versions].count(models["a"].read_bytes()) == 1
    assert len(versions) == 2

    store = lib.LocalSnapshot(tmp_path / "snap")
    data, info = store.get("Users/j/jdoe/PIDML", lib.parse_time("2024-01-15"))
    assert data == models["a"].read_bytes() and info.valid_from == JAN
    data, _ = store.get("Users/j/jdoe/PIDML", lib.parse_time("2024-02-15"))  # newest wins
    assert data == models["b"].read_bytes()
    data, _ = store.get("Users/j/jdoe/PIDML", lib.parse_time("2024-02-15"), {"period": "LHC23zzh"})
    assert data == models["a"].read_bytes()
    with pytest.raises(CCDBError, match="no object .* valid at"):
        store.get("Users/j/jdoe/PIDML", MAR)

    listing = store.list("Users/j/jdoe/PIDML")
    assert [o.md5 for o in listing.objects] == [lib.md5_hex(models[k].read_bytes()) for k in "ba"]
    assert store.list("Users/j").subfolders == ["Users/j/jdoe"]


def test_local_keeps_foreign_snapshot(tmp_path, models):
    folder = tmp_path / "ccdb/A/B"
    folder.mkdir(parents=True)
    (folder / "snapshot.root").write_bytes(b"someone else's object")
    result = lib.upload_model(models["a"], "A/B")
    assert any("not written by pid-export" in n for n in result.notes)
    kept = list((folder / ".versions").glob("preexisting_*"))
    assert [k.read_bytes() for k in kept] == [b"someone else's object"]
    listing = lib.list_objects("A/B")
    assert {o.metadata.get("origin") for o in listing.objects} == {"preexisting", None}


def test_local_unreadable_index_left_alone(tmp_path, models):
    index = tmp_path / "ccdb/A/B/.versions/index.json"
    index.parent.mkdir(parents=True)
    index.write_text("{not json")
    with pytest.raises(CCDBError, match="unreadable"):
        lib.upload_model(models["a"], "A/B")
    assert index.read_text() == "{not json"
    assert not (tmp_path / "ccdb/A/B/snapshot.root").exists()


def test_local_get_without_index_and_missing(tmp_path):
    folder = tmp_path / "ccdb/X/Y"
    folder.mkdir(parents=True)
    (folder / "snapshot.root").write_bytes(b"raw")
    data, info = lib.LocalSnapshot("ccdb").get("X/Y", NOW)
    assert data == b"raw" and info.valid_from is None
    with pytest.raises(CCDBError, match="does not exist"):
        lib.LocalSnapshot("ccdb").get("X/Z", NOW)


def test_local_dry_run_writes_nothing(tmp_path, models):
    result = lib.upload_model(models["a"], "A/B", dry_run=True)
    assert result.dry_run and not (tmp_path / "ccdb").exists()
    assert any("snapshot.root" in line and result.md5 in line for line in result.request)


# --------------------------------------------------------------------------- REST


def test_rest_round_trip(server, models):
    store = rest(server)
    meta = {"period": "LHC23 zzh/pass4 \u00fc"}
    art = artefact(models["a"])
    result = store.upload(art, "Users/j/jdoe/PIDML", JAN, MAR,
                          lib.merge_metadata(art.metadata, meta))
    assert result.verified
    (obj,) = server.objects
    assert result.location == f"{server.url}/Users/j/jdoe/PIDML/{JAN}/{obj.id}"
    assert obj.data == models["a"].read_bytes()
    assert (obj.valid_from, obj.valid_until, obj.file_name) == (JAN, MAR, "pid_a.onnx")
    assert obj.metadata["period"] == meta["period"]  # escaped on the way, intact on arrival
    assert obj.metadata["model_kind"] == "xgb" and obj.metadata["o2_contract"] == "passed"
    post = next(p for m, p in server.requests if m == "POST")
    assert "period=LHC23%20zzh%2Fpass4%20%C3%BC/" in post

    data, info = store.get("Users/j/jdoe/PIDML", lib.parse_time("2024-02-15"))
    assert data == models["a"].read_bytes()
    assert (info.valid_from, info.valid_until, info.id) == (JAN, MAR, obj.id)


def test_rest_second_upload_kept_and_listed(server, models):
    store = rest(server)
    for name, start in (("a", JAN), ("b", FEB)):
        store.upload(artefact(models[name]), "A/B", start, MAR, artefact(models[name]).metadata)
    rest(server).upload(artefact(models["a"]), "A/C/D", JAN, MAR, {})
    listing = store.list("A/B")
    assert [o.md5 for o in listing.objects] == [lib.md5_hex(models[k].read_bytes()) for k in "ba"]
    assert listing.objects[0].metadata["model_kind"] == "rf"
    assert store.list("A").subfolders == ["A/B", "A/C"]
    table = "\n".join(lib.format_listing(listing))
    assert "2 object(s)" in table and "model_kind=rf" in table and "2024-02-01 00:00:00" in table
    data, _ = store.get("A/B", lib.parse_time("2024-01-15"))
    assert data == models["a"].read_bytes()


def test_rest_metadata_filter(server, models):
    store = rest(server)
    store.upload(artefact(models["a"]), "A/B", JAN, MAR, {"variant": "loose"})
    store.upload(artefact(models["b"]), "A/B", JAN, MAR, {"variant": "tight"})
    assert store.get("A/B", FEB)[0] == models["b"].read_bytes()
    assert store.get("A/B", FEB, {"variant": "loose"})[0] == models["a"].read_bytes()
    with pytest.raises(CCDBError, match="404"):
        store.get("A/B", FEB, {"variant": "none"})


def test_rest_dry_run_sends_nothing(server, models):
    result = lib.upload_model(models["a"], "A/B", url=server.url, start=JAN, end=MAR,
                              meta=["period=x y"], dry_run=True)
    assert server.requests == [] and server.objects == []
    text = "\n".join(result.request)
    assert f"POST {server.url}/A/B/{JAN}/{MAR}/" in text and "period=x%20y/" in text
    assert "Content-Length:" in text and "multipart/form-data; boundary=" in text
    assert result.md5 in text and f"{models['a'].stat().st_size} bytes" in text


def test_contract_failure_refused_then_forced(server, models):
    with pytest.raises(ContractError, match="rows_sum_to_one"):
        lib.upload_model(models["bad"], "A/B", url=server.url)
    assert server.requests == []
    with pytest.warns(UserWarning, match="fails the O2 contract"):
        result = lib.upload_model(models["bad"], "A/B", url=server.url, force=True)
    assert result.contract == "forced" and result.verified
    assert server.objects[0].metadata["o2_contract"] == "forced"


def test_not_onnx_refused(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a readable ONNX"):
        lib.upload_model(junk, "A/B")
    with pytest.raises(InputError, match="no such model"):
        lib.upload_model(tmp_path / "missing.onnx", "A/B")


# --------------------------------------------------------------------------- faults


def test_500_once_is_retried(server, models):
    server.faults.post_500 = 1
    result = rest(server).upload(artefact(models["a"]), "A/B", JAN, MAR, {})
    assert result.verified
    assert server.count("POST") == 2 and len(server.objects) == 1
    assert server.count("GET", "/browse/A/B") == 1  # looked before sending again


def test_timeout_after_store_not_uploaded_twice(server, models):
    server.faults.post_hang_after_store = 1
    result = rest(server).upload(artefact(models["a"]), "A/B", JAN, MAR, {})
    assert result.verified and any("not sent again" in n for n in result.notes)
    assert server.count("POST") == 1 and len(server.objects) == 1
    assert result.object_id == server.objects[0].id


def test_timeout_before_store_sends_again(server, models):
    server.faults.post_hang_before_store = 1
    result = rest(server).upload(artefact(models["a"]), "A/B", JAN, MAR, {})
    assert result.verified and server.count("POST") == 2 and len(server.objects) == 1


def test_4xx_not_retried_and_message_shown(server, models):
    server.faults.post_error = (403, "Permission denied: Users/j/jdoe is not yours")
    with pytest.raises(CCDBUploadError, match="HTTP 403.*Permission denied: Users/j/jdoe"):
        rest(server).upload(artefact(models["a"]), "A/B", JAN, MAR, {})
    assert server.count("POST") == 1 and server.objects == []


def test_server_down(models):
    store = lib.RestCCDB(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01)
    with pytest.raises(CCDBUploadError, match="cannot connect.*server down"):
        store.upload(artefact(models["a"]), "A/B", JAN, MAR, {})
    with pytest.raises(CCDBError, match="cannot connect"):
        store.list("A/B")


def test_redirect_loop(server, models):
    store = rest(server)
    server.faults.redirect_loop = True
    with pytest.raises(CCDBUploadError, match="round trip failed.*redirect loop"):
        store.upload(artefact(models["a"]), "A/B", JAN, MAR, {})
    with pytest.raises(CCDBError, match="redirect loop .*/loop/a -> .*/loop/b -> .*/loop/a"):
        store.get("A/B", FEB)


def test_truncated_download(server, models):
    store = rest(server)
    store.upload(artefact(models["a"]), "A/B", JAN, MAR, {})
    server.faults.truncate = True
    with pytest.raises(CCDBError, match="truncated"):
        store.get("A/B", FEB)
    assert server.count("GET", "/download/") == 1 + 3  # the round trip, then 3 attempts


def test_corrupted_download_is_a_round_trip_failure(server, models):
    server.faults.corrupt = True
    with pytest.raises(CCDBUploadError, match="round trip failed.*damaged: MD5"):
        rest(server).upload(artefact(models["a"]), "A/B", JAN, MAR, {})


def test_get_500_once_is_retried(server, models):
    store = rest(server)
    store.upload(artefact(models["a"]), "A/B", JAN, MAR, {})
    server.faults.get_500 = 1
    assert store.get("A/B", FEB)[0] == models["a"].read_bytes()


def test_not_a_ccdb(server):
    with pytest.raises(CCDBError, match="not the CCDB's browse JSON"):
        lib.RestCCDB(server.url + "/page").list("x")


# --------------------------------------------------------------------------- credentials


def test_client_certificate_checks(tmp_path, caplog, models):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\nCERTBODY\n-----END CERTIFICATE-----\n")
    key.write_text("-----BEGIN PRIVATE KEY-----\nSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n")
    key.chmod(0o600)
    with pytest.raises(ConfigError, match="--key needs --cert"):
        lib.RestCCDB("https://127.0.0.1:1", key=key)
    with pytest.raises(ConfigError, match="no such file"):
        lib.RestCCDB("https://127.0.0.1:1", cert=tmp_path / "nope.pem", key=key)
    assert lib.RestCCDB("https://127.0.0.1:1", cert=cert, key=key).cert == (str(cert), str(key))
    with caplog.at_level(logging.WARNING):
        assert lib.RestCCDB("http://127.0.0.1:1", cert=cert, key=key).cert is None
    assert "plain HTTP" in caplog.text

    with caplog.at_level(logging.DEBUG):
        result = invoke("-vv", "upload", models["a"], "--path", "A/B", "--dry-run",
                        "--ccdb-url", "https://127.0.0.1:1", "--cert", cert, "--key", key)
    assert result.exit_code == 0, result.output
    assert f"TLS client certificate {cert}, key {key}" in result.output
    assert "SECRETKEYMATERIAL" not in result.output + caplog.text

    key.write_text("-----BEGIN ENCRYPTED PRIVATE KEY-----\nxx\n"
                   "-----END ENCRYPTED PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="pass phrase"):
        lib.RestCCDB("https://127.0.0.1:1", cert=cert, key=key)


def test_credential_headers_not_shown():
    shown = lib._safe_headers({"Authorization": "Basic c2VjcmV0", "Accept": "*/*"})
    assert shown == {"Authorization": "<not shown>", "Accept": "*/*"}


@pytest.mark.parametrize("url, why", [
    ("localhost:8080", "expected file://DIR"), ("ftp://127.0.0.1/x", "expected file://DIR"),
    ("file://", "give a folder"), ("http://user:pw@127.0.0.1:1", "user name or password"),
])
def test_bad_urls(url, why):
    with pytest.raises(ConfigError, match=why):
        lib.open_store(url)


def test_default_store_is_local_dot_ccdb(tmp_path):
    store = lib.open_store(None)
    assert isinstance(store, lib.LocalSnapshot) and store.root == tmp_path / "ccdb"
    assert lib.open_store("file://rel/dir").root == tmp_path / "rel/dir"


# --------------------------------------------------------------------------- CLI


def test_cli_local_upload_ls_get(tmp_path, models):
    result = invoke("upload", models["a"], "--path", "Users/j/jdoe/PIDML/xgb",
                    "--meta", "period=LHC23zzh")
    assert result.exit_code == 0, result.output
    root = tmp_path / "ccdb"
    assert (root / "Users/j/jdoe/PIDML/xgb/snapshot.root").read_bytes() == \
        models["a"].read_bytes()
    assert f"ccdbUrl        file://{root}" in result.output
    assert "ccdbPath       Users/j/jdoe/PIDML/xgb" in result.output
    assert f"ALICEO2_CCDB_LOCALCACHE={root}" in result.output

    listing = invoke("ccdb", "ls", "Users/j/jdoe/PIDML/xgb")
    assert listing.exit_code == 0 and "period=LHC23zzh" in listing.output
    assert lib.md5_hex(models["a"].read_bytes()) in listing.output

    got = invoke("ccdb", "get", "Users/j/jdoe/PIDML/xgb", "--out", "copy.onnx")
    assert got.exit_code == 0, got.output
    assert (tmp_path / "copy.onnx").read_bytes() == models["a"].read_bytes()
    again = invoke("ccdb", "get", "Users/j/jdoe/PIDML/xgb", "--out", "copy.onnx")
    assert again.exit_code == 2 and "exists; pass --force" in again.output
    forced = invoke("ccdb", "get", "Users/j/jdoe/PIDML/xgb", "--out", "copy.onnx", "--force")
    assert forced.exit_code == 0


def test_cli_rest_upload_ls_get(tmp_path, server, models):
    args = ["--ccdb-url", server.url]
    result = invoke("upload", models["a"], "--path", "A/B", "--start", "2024-01-01",
                    "--end", "2024-03-01", *args)
    assert result.exit_code == 0, result.output
    (obj,) = server.objects
    assert f"location  {server.url}/A/B/{JAN}/{obj.id}" in result.output
    assert "round trip: GET at" in result.output and f"ccdbTimestamp  {JAN}" in result.output

    listing = invoke("ccdb", "ls", "A/B", *args)
    assert listing.exit_code == 0 and obj.md5 in listing.output
    assert "model_kind=xgb" in listing.output
    got = invoke("ccdb", "get", "A/B", "--timestamp", "2024-02-15", "--out", "m.onnx", *args)
    assert got.exit_code == 0, got.output
    assert (tmp_path / "m.onnx").read_bytes() == models["a"].read_bytes()
    missing = invoke("ccdb", "get", "A/B", "--timestamp", "2025-01-01", "--out", "n.onnx", *args)
    assert missing.exit_code == 4 and "HTTP 404" in missing.output
    assert not (tmp_path / "n.onnx").exists()


def test_cli_exit_codes(server, models):
    args = ["--ccdb-url", server.url]
    bad_path = invoke("upload", models["a"], "--path", "Users/j/2024", *args)
    assert bad_path.exit_code == 2 and "all digits" in bad_path.output
    bad_meta = invoke("upload", models["a"], "--path", "A/B", "--meta", "a.b=1", *args)
    assert bad_meta.exit_code == 2 and "punctuation" in bad_meta.output
    contract = invoke("upload", models["bad"], "--path", "A/B", *args)
    assert contract.exit_code == 3 and "O2 contract" in contract.output
    assert server.requests == []
    forced = invoke("upload", models["bad"], "--path", "A/B", "--force", *args)
    assert forced.exit_code == 0 and "WARNING: --force" in forced.stderr
    server.faults.post_error = (400, "bad validity")
    refused = invoke("upload", models["a"], "--path", "A/B", *args)
    assert refused.exit_code == 4
    assert "HTTP 400" in refused.output and "bad validity" in refused.output


def test_cli_dry_run_and_hang(server, models):
    dry = invoke("upload", models["a"], "--path", "A/B", "--dry-run", "--ccdb-url", server.url)
    assert dry.exit_code == 0 and "dry run: nothing written or sent" in dry.output
    assert server.requests == []
    server.faults.post_hang_after_store = 1
    hang = invoke("upload", models["a"], "--path", "A/B", "--timeout", "0.5",
                  "--ccdb-url", server.url)
    assert hang.exit_code == 0, hang.output
    assert server.count("POST") == 1 and "not sent again" in hang.output


def test_cli_server_down(models):
    result = invoke("upload", models["a"], "--path", "A/B", "--retries", "0",
                    "--ccdb-url", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 4 and "cannot connect" in result.output


def test_index_is_json_with_validity(tmp_path, models):
    invoke("upload", models["a"], "--path", "A/B", "--start", "2024-01-01", "--end", "+1y")
    index = json.loads((tmp_path / "ccdb/A/B/.versions/index.json").read_text())
    (entry,) = index["objects"]
    assert entry["validFrom"] == JAN and entry["MD5"] == lib.md5_hex(models["a"].read_bytes())
    assert (tmp_path / "ccdb/A/B/.versions" / entry["file"]).is_file()


def test_written_files_have_ordinary_permissions(tmp_path, models):
    old = os.umask(0o022)
    try:
        lib.upload_model(models["a"], "A/B")
        lib.fetch_object("A/B", tmp_path / "got.onnx")
    finally:
        os.umask(old)
    for path in (tmp_path / "ccdb/A/B/snapshot.root", tmp_path / "got.onnx"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_get_into_missing_folder(server):
    result = invoke("ccdb", "get", "A/B", "--out", "no/dir/m.onnx", "--ccdb-url", server.url)
    assert result.exit_code == 2 and "does not exist" in result.output
    assert server.requests == []

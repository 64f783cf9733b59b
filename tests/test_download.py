"""Downloads from a loopback server: complete, resumed, retried, verified, Kaggle, local path."""

from __future__ import annotations

import base64
import json

import pytest

from vitfgvc.config import DatasetConfig, DownloadSection, KaggleSource, UrlFile
from vitfgvc.data.acquire import SourceError, acquire
from vitfgvc.data.download import Checksums, ChecksumError, DownloadError, KaggleError, fetch, kaggle_credentials

from .fixtures import FileServer, md5, sha256, write_cub, write_dogs, write_plant

FAST = dict(retries=3, backoff=0.01, timeout=5.0, progress=False)
DL = DownloadSection(retries=3, backoff=0.01, timeout=5.0, chunk_mib=1)


@pytest.fixture()
def payload():
    return bytes(range(256)) * 4096  # 1 MiB


@pytest.fixture()
def no_kaggle_env(monkeypatch, tmp_path):
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))


def _sums(data: bytes) -> Checksums:
    import hashlib

    return Checksums(sha256=hashlib.sha256(data).hexdigest(), size=len(data))


def test_complete_download_is_verified_and_atomic(tmp_path, payload):
    with FileServer({"f.bin": payload}) as srv:
        path = fetch(srv.url("f.bin"), tmp_path / "f.bin", checksums=_sums(payload), **FAST)
        assert path.read_bytes() == payload
        assert not (tmp_path / "f.bin.part").exists()
        # a verified copy is not fetched again
        srv.clear_log()
        fetch(srv.url("f.bin"), tmp_path / "f.bin", checksums=_sums(payload), **FAST)
        assert srv.requests == []


def test_resume_after_the_server_cuts_the_connection(tmp_path, payload):
    with FileServer({"f.bin": payload}) as srv:
        srv.fault("f.bin", cut_after=300_000)
        path = fetch(srv.url("f.bin"), tmp_path / "f.bin", checksums=_sums(payload), **FAST)
        gets = [r for r in srv.requests_for("f.bin") if r.method == "GET"]
    assert path.read_bytes() == payload
    assert [r.range for r in gets] == [None, "bytes=300000-"]
    assert gets[0].sent == 300_000 and gets[1].status == 206


def test_a_partial_file_left_by_a_killed_run_is_resumed(tmp_path, payload):
    (tmp_path / "f.bin.part").write_bytes(payload[:123_456])
    with FileServer({"f.bin": payload}) as srv:
        fetch(srv.url("f.bin"), tmp_path / "f.bin", checksums=_sums(payload), **FAST)
        assert [r.range for r in srv.requests] == ["bytes=123456-"]
    assert (tmp_path / "f.bin").read_bytes() == payload


def test_retry_after_503(tmp_path, payload):
    with FileServer({"f.bin": payload}) as srv:
        srv.fault("f.bin", status=503, times=2)
        fetch(srv.url("f.bin"), tmp_path / "f.bin", checksums=_sums(payload), **FAST)
        assert [r.status for r in srv.requests] == [503, 503, 200]


def test_gives_up_after_the_retries_and_keeps_the_partial_file(tmp_path, payload):
    with FileServer({"f.bin": payload}) as srv:
        srv.fault("f.bin", cut_after=1000, times=None)
        with pytest.raises(DownloadError, match="gave up after 4 attempts"):
            fetch(srv.url("f.bin"), tmp_path / "f.bin", checksums=_sums(payload), **FAST)
    assert (tmp_path / "f.bin.part").stat().st_size == 4000  # four attempts, each resumed
    assert not (tmp_path / "f.bin").exists()


def test_checksum_mismatch_names_the_file_and_leaves_nothing_to_trust(tmp_path, payload):
    expected = _sums(payload)
    with FileServer({"CUB_200_2011.tgz": payload[:-1] + b"X"}) as srv:
        with pytest.raises(ChecksumError) as err:
            fetch(srv.url("CUB_200_2011.tgz"), tmp_path / "CUB_200_2011.tgz", checksums=expected, **FAST)
    message = str(err.value)
    assert "CUB_200_2011.tgz: sha256 mismatch" in message and expected.sha256 in message
    assert sha256_bytes(payload[:-1] + b"X") in message
    assert list(tmp_path.iterdir()) == []


def test_a_corrupt_file_in_place_is_replaced(tmp_path, payload):
    (tmp_path / "f.bin").write_bytes(b"stale")
    with FileServer({"f.bin": payload}) as srv:
        fetch(srv.url("f.bin"), tmp_path / "f.bin", checksums=_sums(payload), **FAST)
    assert (tmp_path / "f.bin").read_bytes() == payload


def test_404_fails_at_once(tmp_path):
    with FileServer({}) as srv:
        with pytest.raises(DownloadError, match="HTTP 404"):
            fetch(srv.url("missing.tgz"), tmp_path / "x", **FAST)
        assert len(srv.requests) == 1


def sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------- whole datasets
def test_acquire_cub_over_http(tmp_path):
    fx = write_cub(tmp_path / "fx")
    archive = fx.files["CUB_200_2011.tgz"]
    with FileServer({"records/CUB_200_2011.tgz": archive}) as srv:
        cfg = DatasetConfig(urls=[UrlFile(url=srv.url("records/CUB_200_2011.tgz"), file="CUB_200_2011.tgz",
                                          sha256=sha256(archive), size=archive.stat().st_size)])
        dl = DL.model_copy(update={"cache_dir": str(tmp_path / "cache")})
        srv.fault("records/CUB_200_2011.tgz", cut_after=10_000)
        summary = acquire("cub", cfg, dl, tmp_path / "raw" / "cub", progress=False)
    assert summary["labelled_images"] == len(fx.records)
    assert (tmp_path / "raw/cub/CUB_200_2011/images.txt").exists()
    assert (tmp_path / "raw/cub/attributes.txt").exists()
    assert (tmp_path / "cache/cub/CUB_200_2011.tgz").exists()
    assert not (tmp_path / "raw/.cub.tmp").exists()


def test_acquire_with_a_bad_checksum_leaves_no_output(tmp_path):
    fx = write_dogs(tmp_path / "fx")
    with FileServer({k: v for k, v in fx.files.items()}) as srv:
        urls = [UrlFile(url=srv.url(name), file=name, sha256=sha256(path)) for name, path in fx.files.items()]
        urls[1] = urls[1].model_copy(update={"sha256": "0" * 64})
        dl = DL.model_copy(update={"cache_dir": str(tmp_path / "cache")})
        with pytest.raises(ChecksumError, match=f"{urls[1].file}: sha256 mismatch"):
            acquire("dogs", DatasetConfig(urls=urls), dl, tmp_path / "raw" / "dogs", progress=False)
    assert not (tmp_path / "raw" / "dogs").exists() and not (tmp_path / "raw" / ".dogs.tmp").exists()
    assert not (tmp_path / "cache/dogs" / urls[1].file).exists()


def _kaggle_cfg():
    return DatasetConfig(kaggle=KaggleSource(competition="plant-pathology-2020-fgvc7",
                                             file="plant-pathology-2020-fgvc7.zip"))


def test_kaggle_competition_download(tmp_path, monkeypatch, no_kaggle_env):
    fx = write_plant(tmp_path / "fx")
    zip_path = fx.files["plant-pathology-2020-fgvc7.zip"]
    with FileServer() as srv:
        srv.add_kaggle_competition("plant-pathology-2020-fgvc7", zip_path)
        user, key = srv.kaggle_credentials
        monkeypatch.setenv("KAGGLE_USERNAME", user)
        monkeypatch.setenv("KAGGLE_KEY", key)
        cfg = _kaggle_cfg().model_copy(update={"kaggle": KaggleSource(
            competition="plant-pathology-2020-fgvc7", file="plant-pathology-2020-fgvc7.zip", md5=md5(zip_path))})
        dl = DL.model_copy(update={"cache_dir": str(tmp_path / "cache"), "kaggle_api": srv.kaggle_api})
        summary = acquire("plant", cfg, dl, tmp_path / "raw" / "plant", progress=False)
        api, storage = srv.requests
    assert summary["labelled_images"] == len(fx.records)
    assert api.path == "/api/v1/competitions/data/download-all/plant-pathology-2020-fgvc7"
    assert api.authorization == "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()
    assert storage.path.startswith("/storage/") and storage.authorization is None  # not sent to storage


def test_kaggle_json_in_config_dir(tmp_path, monkeypatch, no_kaggle_env):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg/kaggle.json").write_text(json.dumps({"username": "u", "key": "k"}))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "cfg"))
    assert kaggle_credentials() == ("u", "k")
    (tmp_path / "cfg/kaggle.json").write_text("{}")
    with pytest.raises(KaggleError, match="kaggle.json: expected a JSON object with 'username' and 'key'"):
        kaggle_credentials()


def test_missing_kaggle_credentials_list_the_three_ways(tmp_path, no_kaggle_env):
    with FileServer() as srv:
        dl = DL.model_copy(update={"cache_dir": str(tmp_path / "cache"), "kaggle_api": srv.kaggle_api})
        with pytest.raises(KaggleError) as err:
            acquire("plant", _kaggle_cfg(), dl, tmp_path / "raw" / "plant", progress=False)
        assert srv.requests == []
    message = str(err.value)
    assert "no Kaggle credentials" in message and "Three ways to provide" in message
    for way in ("~/.kaggle/", "KAGGLE_CONFIG_DIR", "KAGGLE_USERNAME", "datasets.plant.path", "datasets.plant.urls"):
        assert way in message


@pytest.mark.parametrize("case", ["bad_key", "rules"])
def test_kaggle_refusals_explain_what_to_do(tmp_path, monkeypatch, no_kaggle_env, case):
    fx = write_plant(tmp_path / "fx")
    with FileServer() as srv:
        srv.add_kaggle_competition("plant-pathology-2020-fgvc7", fx.files["plant-pathology-2020-fgvc7.zip"],
                                   rules_accepted=case != "rules")
        monkeypatch.setenv("KAGGLE_USERNAME", srv.kaggle_credentials[0])
        monkeypatch.setenv("KAGGLE_KEY", "wrong" if case == "bad_key" else srv.kaggle_credentials[1])
        dl = DL.model_copy(update={"cache_dir": str(tmp_path / "cache"), "kaggle_api": srv.kaggle_api})
        with pytest.raises(KaggleError) as err:
            acquire("plant", _kaggle_cfg(), dl, tmp_path / "raw" / "plant", progress=False)
    message = str(err.value)
    if case == "bad_key":
        assert "HTTP 401" in message and "rejected the credentials" in message
    else:
        assert "HTTP 403" in message and "accept the rules on https://www.kaggle.com/competitions/" in message
    assert "Three ways to provide" in message
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())


def test_local_path_never_touches_the_network(tmp_path, monkeypatch):
    fx = write_dogs(tmp_path / "fx")

    def no_network(*a, **k):
        raise AssertionError("network used")

    monkeypatch.setattr("urllib.request.OpenerDirector.open", no_network)
    cfg = DatasetConfig(path=str(fx.root), urls=[UrlFile(url="http://unused.invalid/images.tar", file="images.tar",
                                                         sha256=sha256(fx.files["images.tar"]))])
    summary = acquire("dogs", cfg, DL, tmp_path / "raw" / "dogs", progress=False)
    assert summary["labelled_images"] == len(fx.records)
    assert (tmp_path / "raw/dogs/Images").is_dir() and (tmp_path / "raw/dogs/train_list.mat").exists()


def test_local_archive_with_a_wrong_checksum_is_refused(tmp_path):
    fx = write_dogs(tmp_path / "fx")
    cfg = DatasetConfig(path=str(fx.root), urls=[UrlFile(url="http://unused.invalid/lists.tar", file="lists.tar",
                                                         sha256="f" * 64)])
    with pytest.raises(ChecksumError, match="lists.tar: sha256 mismatch"):
        acquire("dogs", cfg, DL, tmp_path / "raw" / "dogs", progress=False)


def test_local_extracted_tree(tmp_path):
    fx = write_cub(tmp_path / "fx")
    from vitfgvc.data.extract import extract

    extract(fx.files["CUB_200_2011.tgz"], tmp_path / "tree", progress=False)
    summary = acquire("cub", DatasetConfig(path=str(tmp_path / "tree")), DL, tmp_path / "raw" / "cub",
                      progress=False)
    assert summary["labelled_images"] == len(fx.records)


def test_local_path_with_something_else(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk/readme.txt").write_text("hello")
    with pytest.raises(SourceError, match="holds neither CUB_200_2011.tgz nor their extracted tree"):
        acquire("cub", DatasetConfig(path=str(tmp_path / "junk")), DL, tmp_path / "raw" / "cub", progress=False)
    with pytest.raises(SourceError, match="is not a folder"):
        acquire("cub", DatasetConfig(path=str(tmp_path / "nope")), DL, tmp_path / "raw" / "cub", progress=False)


def test_no_source_at_all(tmp_path):
    with pytest.raises(SourceError, match="no source set"):
        acquire("cars", DatasetConfig(), DL, tmp_path / "raw" / "cars", progress=False)

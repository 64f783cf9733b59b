"""HTTP(S) and Kaggle downloads: streamed, resumed, retried, verified, atomic.

A file is downloaded to ``<name>.part`` beside its destination. A broken
connection is resumed with a ``Range`` request; 5xx/429 answers and network
errors are retried with exponential backoff. Only a file whose size and
checksums match is renamed into place; a mismatch deletes the partial file, so
the next run never trusts it.
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..errors import UserError
from ..io import file_hashes

USER_AGENT = "vitfgvc-downloader/1.0"
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(UserError, RuntimeError):
    """A download failed for good (after retries, or on a non-retryable answer)."""


class ChecksumError(DownloadError):
    """A downloaded or local file does not have the expected size or hash."""


@dataclass(frozen=True)
class Checksums:
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None

    def verify(self, path: Path, name: str | None = None) -> dict[str, str]:
        """Raise :class:`ChecksumError` unless ``path`` matches; return the hashes computed."""
        name = name or path.name
        actual_size = path.stat().st_size
        if self.size is not None and actual_size != self.size:
            raise ChecksumError(f"{name}: size mismatch: expected {self.size} bytes, got {actual_size}")
        digests = file_hashes(path, sha256=True, md5=self.md5 is not None)
        for algo in ("sha256", "md5"):
            expected = getattr(self, algo)
            if expected is not None and digests[algo] != expected.lower():
                raise ChecksumError(f"{name}: {algo} mismatch: expected {expected.lower()}, got {digests[algo]}")
        return digests


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # we follow redirects ourselves
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _open(url: str, headers: dict[str, str], timeout: float, max_redirects: int = 5):
    """GET ``url``, following redirects ourselves so that credentials are not forwarded."""
    for _ in range(max_redirects + 1):
        req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **headers})
        try:
            return _OPENER.open(req, timeout=timeout)
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308) and exc.headers.get("Location"):
                url = urllib.parse.urljoin(url, exc.headers["Location"])
                # credentials go to the API only: signed storage URLs (Kaggle -> GCS) reject them
                headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                exc.close()
                continue
            raise
    raise DownloadError(f"{url}: more than {max_redirects} redirects")


def fetch(
    url: str,
    dest: str | Path,
    *,
    checksums: Checksums = Checksums(),
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    chunk_size: int = 1 << 22,
    headers: dict[str, str] | None = None,
    describe_http_error=None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` unless a verified copy is already there."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            checksums.verify(dest)
            return dest
        except ChecksumError:
            dest.unlink()  # a stale or corrupt copy: never trust it
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            _download_once(url, part, checksums.size, headers or {}, timeout, chunk_size, progress)
            break
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.exists():  # the partial file is already whole (or wrong): verify below
                break
            if exc.code not in RETRY_STATUS or attempt >= retries:
                if describe_http_error is not None:
                    raise describe_http_error(exc) from None
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            wait = _retry_after(exc)
            wait = backoff * 2**attempt if wait is None else wait
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, _Incomplete) as exc:
            if attempt >= retries:
                raise DownloadError(f"{url}: {exc} (gave up after {retries + 1} attempts; "
                                    f"{_size(part)} bytes kept in {part} for the next run to resume)") from None
            wait = backoff * 2**attempt
        attempt += 1
        tqdm.write(f"{dest.name}: retrying in {wait:.1f}s (attempt {attempt + 1} of {retries + 1})")
        time.sleep(wait)
    try:
        checksums.verify(part, dest.name)
    except ChecksumError as exc:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{exc} (downloaded from {url}; the file was deleted)") from None
    os.replace(part, dest)
    return dest


class _Incomplete(Exception):
    pass


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _download_once(url, part: Path, size, headers, timeout, chunk_size, progress) -> None:
    start = _size(part)
    if size is not None and start == size:
        return
    if size is not None and start > size:
        part.unlink()
        start = 0
    req_headers = dict(headers)
    if start:
        req_headers["Range"] = f"bytes={start}-"
    with _open(url, req_headers, timeout) as resp:
        if start and resp.status != 206:  # the server ignored the Range: start over
            start = 0
        length = resp.headers.get("Content-Length")
        total = start + int(length) if length is not None else size
        mode = "ab" if start else "wb"
        with open(part, mode) as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=part.name.removesuffix(".part"), disable=not progress, leave=False,
        ) as bar:
            while chunk := resp.read(chunk_size):
                out.write(chunk)
                bar.update(len(chunk))
    got = _size(part)
    if total is not None and got < total:
        raise _Incomplete(f"connection closed after {got} of {total} bytes")


# ----------------------------------------------------------------------- Kaggle
class KaggleError(DownloadError):
    pass


def kaggle_credentials(env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(username, key) from KAGGLE_USERNAME/KAGGLE_KEY, else kaggle.json in
    KAGGLE_CONFIG_DIR or ~/.kaggle; ``None`` when none is set."""
    env = os.environ if env is None else env
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return env["KAGGLE_USERNAME"], env["KAGGLE_KEY"]
    folder = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else Path.home() / ".kaggle"
    path = folder / "kaggle.json"
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        return str(data["username"]), str(data["key"])
    except (ValueError, KeyError, TypeError):
        raise KaggleError(f"{path}: expected a JSON object with 'username' and 'key' "
                          "(as downloaded from kaggle.com > Settings > API > Create New Token)") from None


def kaggle_url(api: str, *, competition: str | None = None, dataset: str | None = None) -> str:
    api = api.rstrip("/")
    if competition:
        return f"{api}/competitions/data/download-all/{urllib.parse.quote(competition)}"
    if dataset and dataset.count("/") == 1:
        owner, name = dataset.split("/")
        return f"{api}/datasets/download/{urllib.parse.quote(owner)}/{urllib.parse.quote(name)}"
    raise KaggleError(f"a Kaggle source needs 'competition' or 'dataset: owner/name', got dataset={dataset!r}")


def fetch_kaggle(api: str, dest: Path, *, competition=None, dataset=None, checksums=Checksums(),
                 ways_out: str = "", **kw) -> Path:
    """Download a Kaggle competition's or dataset's archive to ``dest``."""
    url = kaggle_url(api, competition=competition, dataset=dataset)
    page = (f"https://www.kaggle.com/competitions/{competition}" if competition
            else f"https://www.kaggle.com/datasets/{dataset}")
    creds = kaggle_credentials()
    if creds is None:
        raise KaggleError(f"no Kaggle credentials found for {page}.\n{ways_out}")
    token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()

    def describe(exc: urllib.error.HTTPError) -> KaggleError:
        try:
            message = json.loads(exc.read().decode() or "{}").get("message", "")
        except (ValueError, AttributeError):
            message = ""
        if exc.code == 401:
            why = f"Kaggle rejected the credentials of user {creds[0]!r} (HTTP 401 {message})".rstrip()
        elif exc.code == 403:
            why = (f"Kaggle refused the download (HTTP 403: {message or 'forbidden'}); "
                   f"accept the rules on {page} (Join Competition / I Understand and Accept) first")
        elif exc.code == 404:
            why = f"Kaggle has no {'competition' if competition else 'dataset'} at {page} (HTTP 404)"
        else:
            why = f"Kaggle answered HTTP {exc.code} {exc.reason} for {url}"
        return KaggleError(f"{why}.\n{ways_out}")

    return fetch(url, dest, checksums=checksums, headers={"Authorization": f"Basic {token}"},
                 describe_http_error=describe, **kw)

"""Objects in S3-compatible stores (s3://) and Google Cloud Storage (gs://), read through obstore.

Configured by each cloud SDK's standard environment, so `kubeinfer fetch` behaves the same inside and outside
Kubernetes. S3: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, AWS_ENDPOINT_URL, and
IRSA's AWS_ROLE_ARN with AWS_WEB_IDENTITY_TOKEN_FILE (else the instance metadata service). GCS:
GOOGLE_APPLICATION_CREDENTIALS (else the metadata server: workload identity), and STORAGE_EMULATOR_HOST, which,
as in Google's own SDKs, sends unsigned requests to an emulator. Every failure becomes a ``StorageError``: one
line naming the URL and the cause, and whether another attempt may pass. obstore's own retries are off: the
caller retries with backoff and resumes a download where it stopped (a range read pinned to the object's ETag).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

SCHEMES = ("s3", "gs")
# The query parameter that names one version of an object, as each cloud's own URLs spell it.
VERSION_PARAMETERS = {"s3": "versionId", "gs": "generation"}
STREAM_CHUNK = 4 * 1024 * 1024
# S3 error codes that mean the credentials themselves are wrong (not that they lack a permission).
BAD_CREDENTIAL_CODES = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                                  "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidSecurity"})
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


class StorageError(Exception):
    """A request to the object store failed; the message is one line fit for status and events."""

    def __init__(self, message: str, *, retryable: bool = False, changed: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable or changed
        self.changed = changed  # the object changed between two reads of one download: start it again


@dataclass(frozen=True)
class ObjectUrl:
    """s3://BUCKET/KEY or gs://BUCKET/KEY; a key ending in '/' (or none) names every object under that prefix."""

    scheme: str
    bucket: str
    key: str
    version: str | None = None

    @property
    def is_prefix(self) -> bool:
        return self.key == "" or self.key.endswith("/")

    def __str__(self) -> str:
        text = f"{self.scheme}://{self.bucket}/{self.key}"
        return f"{text}?{VERSION_PARAMETERS[self.scheme]}={self.version}" if self.version else text


def parse_object_url(text: str) -> ObjectUrl:
    """Split an s3:// or gs:// URL; raise ValueError naming what is wrong."""
    parts = urlsplit(text)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"{text!r} is not an s3:// or gs:// URL")
    if not _BUCKET.match(parts.netloc):
        raise ValueError(f"{text!r}: {parts.netloc!r} is not a bucket name")
    key = parts.path.lstrip("/")
    if ".." in key.split("/"):
        raise ValueError(f"{text!r}: the key must not contain '..'")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    parameter = VERSION_PARAMETERS[parts.scheme]
    unknown = sorted(set(query) - {parameter})
    if unknown:
        raise ValueError(f"{text!r}: unknown query parameter {unknown[0]!r} (only {parameter} names a version)")
    version = query.get(parameter) or None
    if parameter in query and not version:
        raise ValueError(f"{text!r}: {parameter} is empty")
    if version and (key == "" or key.endswith("/")):
        raise ValueError(f"{text!r}: a version names one object, not a prefix")
    return ObjectUrl(parts.scheme, parts.netloc, key, version)


@dataclass(frozen=True)
class ObjectMeta:
    """What the store says about one object: the ETag and version pin what was read."""

    key: str
    size: int
    etag: str | None
    version: str | None


class Bucket:
    """One bucket of one store, opened from the environment."""

    def __init__(self, url: ObjectUrl, *, timeout: float = 60.0) -> None:
        from obstore.store import GCSStore, S3Store

        self.url = url
        client: dict[str, Any] = {"connect_timeout": timedelta(seconds=timeout),
                                  "read_timeout": timedelta(seconds=timeout),  # silence between two reads
                                  "timeout": timedelta(days=1),  # a whole request: large models take long
                                  "user_agent": _user_agent()}
        retry = {"max_retries": 0, "retry_timeout": timedelta(seconds=timeout)}
        try:
            if url.scheme == "s3":
                endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                            or os.environ.get("AWS_ENDPOINT") or "")
                client["allow_http"] = endpoint.startswith("http://")
                self.store: Any = S3Store(url.bucket, client_options=client, retry_config=retry)
            else:
                emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
                if emulator:
                    base = emulator if "://" in emulator else f"http://{emulator}"
                    client["allow_http"] = base.startswith("http://")
                    self.store = GCSStore(url.bucket, base_url=base.rstrip("/"), skip_signature=True,
                                          client_options=client, retry_config=retry)
                else:
                    self.store = GCSStore(url.bucket, client_options=client, retry_config=retry)
        except Exception as exc:  # obstore raises on credentials it cannot read
            raise _translate(exc, url, None) from None

    def head(self, key: str, version: str | None = None) -> ObjectMeta:
        """The object's size, ETag and version (a one-byte-or-less read where a version is asked for)."""
        import obstore

        try:
            if version is None:
                return _meta(obstore.head(self.store, key))
            result = obstore.get(self.store, key, options={"version": version, "head": True})
            return _meta(result.meta)
        except Exception as exc:
            raise self._error(exc, key) from None

    def list(self, prefix: str) -> list[ObjectMeta]:
        """Every object under the prefix (folder markers, keys ending in '/', left out)."""
        import obstore

        found: list[ObjectMeta] = []
        try:
            for batch in obstore.list(self.store, prefix=prefix or None):
                found += [_meta(entry) for entry in batch if not str(entry["path"]).endswith("/")]
        except Exception as exc:
            raise self._error(exc, prefix) from None
        return sorted(found, key=lambda meta: meta.key)

    def read(self, key: str, *, start: int = 0, etag: str | None = None,
             version: str | None = None) -> tuple[ObjectMeta, Iterator[bytes]]:
        """Stream the object from byte ``start``; with ``etag`` only while the object still has it."""
        import obstore

        options: dict[str, Any] = {}
        if version is not None:
            options["version"] = version
        if etag is not None:
            options["if_match"] = etag
        if start > 0:
            options["range"] = {"offset": start}
        try:
            result = obstore.get(self.store, key, options=options)
        except Exception as exc:
            raise self._error(exc, key) from None
        return _meta(result.meta), self._chunks(result, key)

    def _chunks(self, result: Any, key: str) -> Iterator[bytes]:
        try:
            for chunk in result.stream(min_chunk_size=STREAM_CHUNK):
                yield bytes(chunk)
        except Exception as exc:
            raise self._error(exc, key, during_body=True) from None

    def _error(self, exc: BaseException, key: str, *, during_body: bool = False) -> StorageError:
        url = ObjectUrl(self.url.scheme, self.url.bucket, key, self.url.version)
        error = _translate(exc, url, self, during_body=during_body)
        return error

    def bucket_exists(self) -> bool | None:
        """Whether the bucket exists (None when the store cannot tell, e.g. access to list is denied)."""
        import obstore

        try:
            for _batch in obstore.list(self.store, prefix=self.url.key or None, chunk_size=1):
                break
        except FileNotFoundError:
            return False
        except Exception as exc:
            # fake-gcs-server, the GCS emulator, answers a listing of a missing bucket with 500 "no bucket named".
            return False if "no bucket named" in str(exc) else None
        return True


def _meta(raw: Any) -> ObjectMeta:
    return ObjectMeta(key=str(raw["path"]), size=int(raw["size"]), etag=raw.get("e_tag"),
                      version=raw.get("version"))


def _user_agent() -> str:
    from kubeinfer import __version__

    return f"kubeinfer-fetch/{__version__}"


def _code(text: str) -> str | None:
    found = re.search(r"<Code>([A-Za-z]+)</Code>", text)
    return found.group(1) if found else None


def _status(text: str) -> int | None:
    found = re.search(r"non-2xx status code: (\d{3})", text)
    return int(found.group(1)) if found else None


def _endpoint(text: str) -> str:
    found = re.search(r"Error performing [A-Z]+ (https?://[^/\s]+)", text)
    return found.group(1) if found else "the endpoint"


def _translate(exc: BaseException, url: ObjectUrl, bucket: Bucket | None, *,
               during_body: bool = False) -> StorageError:
    """One line for an obstore exception: no such bucket or key, access denied, bad credentials, endpoint
    unreachable, a server error; the request's signature and the store's debug dump are left out."""
    from obstore import exceptions

    text = str(exc)
    code, status = _code(text), _status(text)
    detail = f" ({code})" if code else ""
    if isinstance(exc, FileNotFoundError):
        if code == "NoSuchBucket" or (code != "NoSuchKey" and bucket is not None and bucket.bucket_exists() is False):
            return StorageError(f"{url}: no such bucket {url.bucket!r}")
        if code == "NoSuchVersion" or (url.version and code is None):
            return StorageError(f"{url}: no such version {url.version!r} of key {url.key!r}")
        return StorageError(f"{url}: no such key {url.key!r}" if url.key else f"{url}: nothing there")
    if isinstance(exc, exceptions.PreconditionError):
        return StorageError(f"{url}: the object changed during the download", changed=True)
    if isinstance(exc, exceptions.UnauthenticatedError) or code in BAD_CREDENTIAL_CODES:
        return StorageError(f"{url}: bad credentials{detail or ' (HTTP 401)'}: the store does not accept them")
    if isinstance(exc, exceptions.PermissionDeniedError):
        return StorageError(f"{url}: access denied{detail or ' (HTTP 403)'}: the credentials may not read it")
    if status is not None:
        retryable = status in RETRYABLE_STATUS
        return StorageError(f"{url}: HTTP {status}{detail} from {_endpoint(text)}", retryable=retryable)
    lowered = text.lower()
    if any(word in lowered for word in ("credential", "token", "private key", "service account", "pem")):
        first = _first_line(text)
        return StorageError(f"{url}: bad credentials: {first}")
    if during_body:
        return StorageError(f"{url}: the connection broke during the download ({_first_line(text)})",
                            retryable=True)
    if any(word in lowered for word in ("error sending request", "connect", "dns error", "timed out", "timeout")):
        return StorageError(f"{url}: endpoint {_endpoint(text)} unreachable", retryable=True)
    return StorageError(f"{url}: {_first_line(text)}", retryable=isinstance(exc, exceptions.GenericError))


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "unknown error"
    line = re.sub(r"\s+in [0-9.]+[µmn]?s\b", "", line)  # the request's duration: noise in a status message
    return line[:300]

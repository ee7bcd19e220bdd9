"""Download model files into a folder: what the runtime pod's init container runs.

Each ITEM is DEST=URL (or a bare URL, stored under its file name). A URL is http(s)://..., s3://BUCKET/KEY or
gs://BUCKET/KEY (object_storage.py: credentials and endpoints come from each cloud SDK's standard environment, so
the command works the same outside Kubernetes); ?versionId= (s3) or ?generation= (gs) reads one version of an
object. DEST is a path inside --into; a DEST ending in "/" takes an archive (.tar, .tar.gz, .tgz, .zip) and
unpacks it there (a single top-level folder in the archive is unwrapped), or an s3:// or gs:// prefix (a URL
ending in "/": a model directory) and copies every object under it there. A URL ending in #sha256=HEX is verified;
every download's size, sha256, ETag and version are printed and recorded (fetch_record.py). Files appear
atomically: a reader never sees a partial download. Files already present are kept (checked against their sha256
when one is given, an object's against its current ETag). Transient failures (connection errors, HTTP
408/429/5xx, a connection that breaks mid-download) are retried with backoff, and an object's download resumes
where it stopped. Long downloads print their progress. Exit status 1 comes with one line naming the URL and the
cause.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kubeinfer.runtime.fetch import FetchError, fetch, parse_item
from kubeinfer.runtime.fetch_cache import NodeCache


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", nargs="+", metavar="ITEM",
                        help="DEST=URL or URL (http(s)://, s3://, gs://); DEST ending in / unpacks an archive or "
                             "copies an s3:// or gs:// prefix")
    parser.add_argument("--into", type=Path, required=True, metavar="DIR", help="folder the files are written into")
    parser.add_argument("--retries", type=int, default=int(os.environ.get("KUBEINFER_FETCH_RETRIES", "4")),
                        help="attempts after the first on transient failures (default 4; env KUBEINFER_FETCH_RETRIES)")
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("KUBEINFER_FETCH_TIMEOUT", "60")),
                        help="seconds without progress before an attempt fails "
                             "(default 60; env KUBEINFER_FETCH_TIMEOUT)")
    parser.add_argument("--progress-every", type=float, metavar="SECONDS",
                        default=float(os.environ.get("KUBEINFER_FETCH_PROGRESS_EVERY", "10")),
                        help="print a download's bytes and rate this often; 0: never "
                             "(default 10; env KUBEINFER_FETCH_PROGRESS_EVERY)")
    parser.add_argument("--force", action="store_true", help="download even when the file is already there")
    parser.add_argument("--cache", type=Path, metavar="DIR", default=os.environ.get("KUBEINFER_FETCH_CACHE") or None,
                        help="a node-local cache of s3:// and gs:// objects, keyed by URL, ETag and version "
                             "(env KUBEINFER_FETCH_CACHE)")
    parser.add_argument("--cache-max-bytes", type=int, metavar="N",
                        default=int(os.environ.get("KUBEINFER_FETCH_CACHE_MAX_BYTES", str(20 * 1024**3))),
                        help="the cache's bound; least recently used objects go past it "
                             "(default 20 GiB; env KUBEINFER_FETCH_CACHE_MAX_BYTES)")


def run(args: argparse.Namespace) -> int:
    """Entry point of `kubeinfer fetch`."""
    try:
        items = [parse_item(text) for text in args.items]
    except ValueError as exc:
        print(f"kubeinfer fetch: {exc}", file=sys.stderr)
        return 2
    args.into.mkdir(parents=True, exist_ok=True)
    cache = None
    if args.cache is not None:
        try:
            cache = NodeCache(args.cache, args.cache_max_bytes)
        except OSError as exc:  # e.g. a hostPath the pod's user may not write: slower, not broken
            print(f"kubeinfer fetch: node cache {args.cache} not usable ({exc.strerror}); fetching without it",
                  file=sys.stderr, flush=True)
    for item in items:
        try:
            message = fetch(item, args.into, retries=args.retries, timeout=args.timeout, force=args.force,
                            progress_every=args.progress_every, cache=cache)
        except FetchError as exc:
            print(f"kubeinfer fetch: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"kubeinfer fetch: {message}", flush=True)
    return 0

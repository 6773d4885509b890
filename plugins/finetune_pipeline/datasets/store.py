"""Object stores the dataset sync reads and writes: a local folder or one S3 bucket, with S3's semantics."""

from __future__ import annotations

import contextlib
import mimetypes
import os
import shutil
import tempfile
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol


class StoreError(Exception):
    """An object store call failed; the message names the key."""


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object."""

    key: str
    size: int
    etag: str
    last_modified: datetime | None = None


class ObjectStore(Protocol):
    """What the sync needs from storage. Keys are '/'-separated and never start with '/'."""

    def uri(self, key: str) -> str: ...

    def location(self, key: str) -> str: ...

    def key_of(self, location: str) -> str | None: ...

    def list_after(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]: ...

    def list_dirs(self, prefix: str) -> list[str]: ...

    def local_path(self, key: str) -> contextlib.AbstractContextManager[Path]: ...

    def get_bytes(self, key: str) -> bytes: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool: ...

    def put_file(self, key: str, path: str | Path) -> None: ...

    def copy(self, src: str, dst: str) -> None: ...

    def move(self, src: str, dst: str) -> None: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def delete_prefix(self, prefix: str) -> int: ...


def join_key(*parts: str) -> str:
    """Join key parts with single slashes, dropping empty parts."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class LocalStore:
    """A folder used like a bucket. Writes are atomic (temp file + rename), as an S3 PUT is."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or ".." in key.split("/"):
            raise StoreError(f"invalid key {key!r}")
        return self.root / key

    def uri(self, key: str) -> str:
        return str(self._path(key)) if key else str(self.root)  # "": the store's root (a prefix-less dataset)

    def location(self, key: str) -> str:
        """The key as a ``file://`` URI, the form Iceberg metadata records (a warehouse in this folder)."""
        return self._path(key).as_uri() if key else self.root.as_uri()

    def key_of(self, location: str) -> str | None:
        """The key of a ``file://`` URI or absolute path inside this folder, else None."""
        path = location[len("file://") :] if location.startswith("file://") else location
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return None

    def list_after(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Keys under prefix, greater than start_after, in S3's (UTF-8 byte) order; prunes skipped folders."""
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        yield from self._walk(base, prefix, start_after or "")

    def _walk(self, dir_key: str, prefix: str, start_after: str) -> Iterator[ObjectInfo]:
        path = self.root / dir_key if dir_key else self.root
        try:
            entries = list(os.scandir(path))
        except (FileNotFoundError, NotADirectoryError):
            return
        # A folder sorts as "name/" so the walk matches S3's flat key order ("a-b" < "a/c").
        named = sorted(
            ((e.name + ("/" if e.is_dir() else ""), e) for e in entries if not e.name.startswith(".")),
            key=lambda item: item[0],
        )
        for name, entry in named:
            key = f"{dir_key}/{name}" if dir_key else name
            if name.endswith("/"):
                if not (key.startswith(prefix) or prefix.startswith(key)):
                    continue
                # Every key under "d/" is below a start_after greater than "d/" that does not start with it.
                if start_after > key and not start_after.startswith(key):
                    continue
                yield from self._walk(key.rstrip("/"), prefix, start_after)
            elif key.startswith(prefix) and key > start_after:
                st = entry.stat()
                yield ObjectInfo(
                    key=key,
                    size=st.st_size,
                    etag=f"{st.st_mtime_ns:x}-{st.st_size:x}",
                    last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
                )

    def list_dirs(self, prefix: str) -> list[str]:
        """Immediate sub-folders of prefix (like ListObjectsV2 CommonPrefixes), each ending with '/'."""
        path = self.root / prefix if prefix else self.root
        try:
            names = [e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")]
        except FileNotFoundError:
            return []
        return sorted(join_key(prefix, n) + "/" for n in names)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Generator[Path, None, None]:
        path = self._path(key)
        if not path.is_file():
            raise StoreError(f"no such object: {self.uri(key)}")
        yield path

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as err:
            raise StoreError(f"no such object: {self.uri(key)}") from err

    def _atomic_write(self, key: str, write, *, fsync: bool) -> None:
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        # Dot-prefixed temp names are never listed, so a killed writer leaves nothing visible.
        tmp = dst.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                write(fh)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes) -> None:
        self._atomic_write(key, lambda fh: fh.write(data), fsync=True)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """Create the object only if there is none (a hard link fails on an existing name); False if there was."""
        dst = self._path(key)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.parent / f".tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, dst)
            except FileExistsError:
                return False
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def put_file(self, key: str, path: str | Path) -> None:
        def write(fh):
            with open(path, "rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

        self._atomic_write(key, write, fsync=False)

    def copy(self, src: str, dst: str) -> None:
        with self.local_path(src) as path:
            self.put_file(dst, path)

    def move(self, src: str, dst: str) -> None:
        source = self._path(src)
        if not source.is_file():
            raise StoreError(f"no such object: {self.uri(src)}")
        target = self._path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(source, target)
        self._prune(source.parent)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        self._prune(path.parent)

    def _prune(self, folder: Path) -> None:
        # S3 has no folders: drop the ones a delete or move left empty, so listings match.
        while folder != self.root and self.root in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def delete_prefix(self, prefix: str) -> int:
        keys = [info.key for info in self.list_after(prefix)]
        for key in keys:
            self.delete(key)
        return len(keys)


class S3Store:
    """One S3 bucket through a boto3 client (e.g. ``S3Hook(...).get_conn()``)."""

    def __init__(self, client, bucket: str, tmp_dir: str | Path | None = None) -> None:
        self.client = client
        self.bucket = bucket
        self.tmp_dir = str(tmp_dir) if tmp_dir else None

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r})"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def location(self, key: str) -> str:
        return self.uri(key)

    def key_of(self, location: str) -> str | None:
        """The key of an ``s3://`` URI in this bucket (``s3a://`` too), else None."""
        for scheme in ("s3://", "s3a://"):
            prefix = f"{scheme}{self.bucket}/"
            if location.startswith(prefix):
                return location[len(prefix) :]
        return None

    def _missing(self, err) -> bool:
        code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def list_after(self, prefix: str, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """ListObjectsV2 with StartAfter, paged lazily: history before start_after is never listed."""
        kwargs = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after:
            kwargs["StartAfter"] = start_after
        for page in self.client.get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                yield ObjectInfo(
                    key=obj["Key"],
                    size=int(obj["Size"]),
                    etag=str(obj.get("ETag", "")).strip('"'),
                    last_modified=obj.get("LastModified"),
                )

    def list_dirs(self, prefix: str) -> list[str]:
        """ListObjectsV2 with Delimiter='/': the CommonPrefixes directly under prefix."""
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        out: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            out.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        return sorted(out)

    @contextlib.contextmanager
    def local_path(self, key: str) -> Generator[Path, None, None]:
        """GetObject to a temp file (managed, ranged download), so Parquet is read by row group from disk."""
        fd, name = tempfile.mkstemp(prefix="ftp-s3-", dir=self.tmp_dir)
        os.close(fd)
        try:
            try:
                self.client.download_file(self.bucket, key, name)
            except Exception as err:
                if self._missing(err):
                    raise StoreError(f"no such object: {self.uri(key)}") from err
                raise
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    def get_bytes(self, key: str) -> bytes:
        """GetObject into memory (small objects: manifests, reports)."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except Exception as err:
            if self._missing(err):
                raise StoreError(f"no such object: {self.uri(key)}") from err
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        """PutObject; S3 makes the new object visible all at once."""
        # A content type lets a browser open the HTML report from its link instead of downloading it.
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def put_bytes_if_absent(self, key: str, data: bytes) -> bool:
        """PutObject with ``If-None-Match: *``: S3 refuses (412) when the key exists; False then."""
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, IfNoneMatch="*")
        except Exception as err:
            code = str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def put_file(self, key: str, path: str | Path) -> None:
        """Managed upload (multipart above the threshold)."""
        self.client.upload_file(str(path), self.bucket, key)

    def copy(self, src: str, dst: str) -> None:
        """Managed server-side copy (CopyObject / UploadPartCopy); no data passes through this process."""
        self.client.copy({"Bucket": self.bucket, "Key": src}, self.bucket, dst)

    def move(self, src: str, dst: str) -> None:
        """CopyObject then DeleteObject; a crash in between leaves both, never neither."""
        self.copy(src, dst)
        self.delete(src)

    def exists(self, key: str) -> bool:
        """HeadObject; a 404 means no."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as err:
            if self._missing(err):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        """DeleteObject."""
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        """DeleteObjects in batches of 1000 over everything under prefix."""
        keys = [info.key for info in self.list_after(prefix)]
        for i in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
        return len(keys)


def store_from_uri(uri: str, *, endpoint_url: str | None = None) -> tuple[ObjectStore, str]:
    """Split ``s3://bucket/prefix`` or a local path into (store, prefix). S3 uses the default boto3 chain."""
    if uri.startswith("s3://"):
        import boto3

        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise StoreError(f"no bucket in {uri!r}")
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None
        return S3Store(boto3.client("s3", endpoint_url=endpoint), bucket), prefix.strip("/")
    if "://" in uri:
        raise StoreError(f"unsupported URI scheme in {uri!r} (use s3:// or a local path)")
    return LocalStore(uri), ""

"""S3 conditional writes made atomic: ``PutObject`` with ``If-None-Match`` or ``If-Match``, one key at a time.

moto checks the precondition and then writes, without a lock, so two such PUTs of one key arriving together
can both pass the check and the second overwrite the first. S3 lets exactly one win and answers the other
412 PreconditionFailed (or 409 ConditionalRequestConflict, which the client retries)
(https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html). Here conditional PUTs of the
same bucket and key are handed to moto one after the other, so the loser always sees the winner's object
and gets moto's 412.
"""

from __future__ import annotations

import threading

from localaws.wsgi import Response, WsgiApp, call_app

HEADERS = ("HTTP_IF_NONE_MATCH", "HTTP_IF_MATCH")


class ConditionalWrites:
    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @staticmethod
    def handles(service: str, operation: str, environ: dict) -> bool:
        return service == "s3" and operation == "PutObject" and any(environ.get(h) for h in HEADERS)

    def handle(self, environ: dict, moto_app: WsgiApp) -> Response:
        key = environ.get("PATH_INFO", "/")
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            return call_app(moto_app, environ)

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

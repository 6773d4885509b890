"""localaws's AWS state on disk, so that a restart keeps it: moto's backends, localaws's own simulations, the clock.

moto has no persistence of its own, but its state is plain Python objects: each service keeps it in a
``BackendDict`` (account -> region -> backend), and ``BackendDict._instances`` lists every one in use. Those
objects pickle, with three exceptions handled here (a test pickles every backend the pipeline touches, so a
new exception shows up as a failing test, not as a state file that restores wrong):

- locks (``threading.Lock``/``RLock``, e.g. in localaws's lifecycles) are saved as fresh, unheld locks;
- ``defaultdict(lambda: defaultdict(X))`` (moto's SSM resource tags) is saved with the equivalent
  ``partial(defaultdict, X)``; any other lambda factory refuses to pickle, loudly;
- moto's S3 keys, which hold their bytes in a temporary file, pickle through moto's own ``__getstate__``.

The virtual clock and the timing profile are saved by reference and restored as the new server's: the clock
carries on from the saved time, plus the real time localaws was down times the clock's speed (AWS does not
stop while a client's emulator restarts), so a waiting Snowball job or HyperPod cluster has moved on as it
would have. A snapshot is taken under the server's request gate, with no request half-processed, and
written atomically (temporary file, fsync, rename): a crash leaves the previous snapshot whole.

Limits, each refused or documented rather than guessed around:
- after a hard kill (SIGKILL, power loss) the state is that of the last snapshot (``--state-interval``);
- a state file is bound to the moto version and to the localaws source that wrote it (a digest of
  ``localaws/*.py``): with another, the server refuses to start instead of restoring objects whose classes
  have changed under them; delete the file to start empty;
- a state file is a pickle: load only files this localaws wrote (never one from someone else);
- fault rules (:mod:`localaws.faults`) are test instrumentation, not AWS state, and are not saved.
"""

from __future__ import annotations

import contextlib
import copyreg
import functools
import hashlib
import importlib
import io
import logging
import os
import pickle
import threading
import time
from collections import defaultdict
from collections.abc import Generator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import moto
from moto.core.base_backend import BackendDict, backend_lock

from localaws.clock import VirtualClock
from localaws.timing import TimingProfile

log = logging.getLogger(__name__)

FORMAT = 1
_LOCK_TYPES = (type(threading.Lock()), type(threading.RLock()))
# One snapshot at a time, from pickling to rename: the periodic saver and a POST /_localaws/state share the
# temporary file, and a later snapshot must never be replaced by an earlier one that was slower to write.
_SAVING = threading.Lock()


class StateFileError(RuntimeError):
    """A state file that cannot be restored soundly (the message says why and what to do)."""


class RequestGate:
    """Many requests at once, or one snapshot alone: a snapshot never sees a request half-processed."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._active = 0
        self._exclusive = False
        self._exclusive_waiting = 0
        self.admitted = 0  # requests admitted so far: a periodic snapshot is skipped when nothing came in

    @contextlib.contextmanager
    def shared(self) -> Generator[None, None, None]:
        with self._condition:
            while self._exclusive or self._exclusive_waiting:
                self._condition.wait()
            self._active += 1
            self.admitted += 1
        try:
            yield
        finally:
            with self._condition:
                self._active -= 1
                if not self._active:
                    self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Generator[None, None, None]:
        with self._condition:
            self._exclusive_waiting += 1
            while self._exclusive or self._active:
                self._condition.wait()
            self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()


def source_digest() -> str:
    """A digest of localaws's own source: the classes a state file's objects are instances of."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        digest.update(path.relative_to(Path(__file__).parent).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def save_state(path: Path, gate: RequestGate, clock: VirtualClock, profile: TimingProfile, state: dict) -> int:
    """Snapshot moto's backends and ``state`` (localaws's simulations) to ``path``; returns the bytes written."""
    with _SAVING:
        return _save_state(Path(path), gate, clock, profile, state)


def _save_state(path: Path, gate: RequestGate, clock: VirtualClock, profile: TimingProfile, state: dict) -> int:
    started = time.monotonic()
    with gate.exclusive():
        header = {
            "format": FORMAT,
            "moto": moto.__version__,
            "localaws": source_digest(),
            "clock": clock.snapshot(),
            "saved_at": time.time(),
        }
        body = io.BytesIO()
        pickler = _StatePickler(body, clock, profile)
        pickler.dump(
            {
                "moto": {(d.backend.__module__, d.service_name): dict(d) for d in list(BackendDict._instances)},
                "localaws": state,
            }
        )
    data = pickle.dumps(header, protocol=pickle.HIGHEST_PROTOCOL) + body.getvalue()
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)
    log.info("localaws state saved to %s (%d bytes, %.2fs)", path, len(data), time.monotonic() - started)
    return len(data)


def read_clock(path: Path) -> VirtualClock:
    """The clock a state file resumes: its saved time, plus the real time since, times its speed."""
    header = _read_header(Path(path))[0]
    saved = header["clock"]
    speed = float(saved["speed"])
    down = max(0.0, time.time() - header["saved_at"])
    start = datetime.fromisoformat(saved["now"]) + timedelta(seconds=down * speed)
    return VirtualClock(speed=speed, start=start)


def load_state(path: Path, clock: VirtualClock, profile: TimingProfile) -> dict:
    """Put a state file's moto backends in place and return its localaws ``state`` to adopt."""
    header, handle = _read_header(Path(path))
    with handle:
        try:
            data = _StateUnpickler(handle, clock, profile).load()
        except Exception as error:
            raise StateFileError(f"{path} could not be restored ({error}); delete it to start empty.") from error
    with backend_lock:
        for (module, service), accounts in data["moto"].items():
            live = _live_backend_dict(module, service)
            dict.clear(live)
            dict.update(live, accounts)
            if live not in BackendDict._instances:
                BackendDict._instances.append(live)
    log.info("localaws state restored from %s (saved at clock %s)", path, header["clock"]["now"])
    return data["localaws"]


def _read_header(path: Path) -> tuple[dict, Any]:
    handle = open(path, "rb")  # noqa: SIM115 - handed to the caller, which closes it
    try:
        header = pickle.load(handle)
    except Exception as error:
        handle.close()
        raise StateFileError(f"{path} is not a localaws state file ({error}); delete it to start empty.") from None
    expected = {"format": FORMAT, "moto": moto.__version__, "localaws": source_digest()}
    found = {key: header.get(key) if isinstance(header, dict) else None for key in expected}
    if found != expected:
        handle.close()
        differ = ", ".join(f"{key} {found[key]!r} (this server: {expected[key]!r})" for key in expected
                           if found[key] != expected[key])
        raise StateFileError(
            f"{path} was written by another localaws or moto ({differ}); its objects would not restore "
            "soundly. Delete it to start empty."
        )
    return header, handle


@functools.cache
def _live_backend_dict(module: str, service: str) -> BackendDict:
    """This process's ``BackendDict`` for ``service``, defined in moto's ``module``."""
    for value in vars(importlib.import_module(module)).values():
        if isinstance(value, BackendDict) and value.service_name == service:
            return value
    raise StateFileError(f"moto has no {service} backends in {module}")


# Pickling

_restoring = threading.local()


def _restored_clock() -> VirtualClock:
    return _restoring.clock


def _restored_timing(name: str) -> Any:
    return getattr(_restoring.profile, name)


def _fresh_lock(kind: str) -> Any:
    return threading.RLock() if kind == "rlock" else threading.Lock()


def _reduce_lock(lock: Any) -> tuple:
    return _fresh_lock, ("rlock" if isinstance(lock, _LOCK_TYPES[1]) else "lock",)


def _new_defaultdict(cls: type, factory: Any) -> defaultdict:
    """An empty ``cls`` (a defaultdict subclass) without its ``__init__``, which may want other arguments."""
    value = defaultdict.__new__(cls)
    defaultdict.__init__(value, factory)
    return value


def _reduce_defaultdict(value: defaultdict) -> tuple:
    """
    defaultdict's own reduce calls ``type(value)(factory)``, which breaks on subclasses with another
    ``__init__`` (moto's SSM ``ParameterDict``), and it cannot save a lambda factory.
    """
    factory = value.default_factory
    if getattr(factory, "__name__", None) == "<lambda>":
        # Only the shape moto uses, ``lambda: defaultdict(X)`` with a picklable X, has a known equivalent.
        sample = factory()
        if not (isinstance(sample, defaultdict) and not sample and isinstance(sample.default_factory, type)):
            raise pickle.PicklingError(f"defaultdict with the unpicklable factory {factory.__qualname__}")
        factory = functools.partial(defaultdict, sample.default_factory)
    state = getattr(value, "__dict__", None) or None
    return _new_defaultdict, (type(value), factory), state, None, iter(value.items())


def _defaultdict_types(cls: type = defaultdict) -> Iterator[type]:
    yield cls
    for subclass in cls.__subclasses__():
        yield from _defaultdict_types(subclass)


def _reduce_backend_dict(value: BackendDict) -> tuple:
    return _live_backend_dict, (value.backend.__module__, value.service_name)


class _StatePickler(pickle.Pickler):
    def __init__(self, handle, clock: VirtualClock, profile: TimingProfile) -> None:
        super().__init__(handle, protocol=pickle.HIGHEST_PROTOCOL)
        timings = {id(getattr(profile, name)): name for name in ("snowball", "dms", "hyperpod", "ssm")}
        self.dispatch_table = {
            **copyreg.dispatch_table,  # re.Pattern and the other types copyreg knows
            _LOCK_TYPES[0]: _reduce_lock,
            _LOCK_TYPES[1]: _reduce_lock,
            **dict.fromkeys(_defaultdict_types(), _reduce_defaultdict),
            # Referenced from inside the state (not the top-level copies): the live one, on restore.
            BackendDict: _reduce_backend_dict,
            VirtualClock: lambda value: self._by_reference(value is clock, "the clock", _restored_clock, ()),
        }
        for timing in {type(getattr(profile, name)) for name in timings.values()}:
            self.dispatch_table[timing] = lambda value: self._by_reference(
                id(value) in timings, "a timing profile", _restored_timing, (timings.get(id(value)),)
            )

    @staticmethod
    def _by_reference(known: bool, what: str, function, args: tuple) -> tuple:
        if not known:
            raise pickle.PicklingError(f"the state holds {what} that is not the server's own")
        return function, args


class _StateUnpickler(pickle.Unpickler):
    def __init__(self, handle, clock: VirtualClock, profile: TimingProfile) -> None:
        super().__init__(handle)
        _restoring.clock, _restoring.profile = clock, profile

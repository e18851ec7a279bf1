"""Kafka for tests, the demo and benchmarks: librdkafka's mock cluster, plus two helpers.

No real Kafka broker can be installed where judgeflow is developed, but librdkafka,
bundled inside the confluent-kafka wheel, contains a mock cluster that speaks the real
Kafka protocol on loopback TCP. `MockCluster` drives its (experimental, hence pinned)
C API through ctypes so tests can choose partition counts and inject broker faults;
`python -m simulators.kafka_mock` hosts one cluster for several processes.

`offsets_for_time` ("replay from a time") and `produce_all` work against any Kafka;
the former falls back to a binary search on message timestamps because the mock does
not answer ListOffsets by timestamp.

Exceptions::

    KafkaMockError
    ├── LibrdkafkaNotFoundError  fatal: the bundled library is missing or mismatched
    ├── MockClusterError         fatal: a mock cluster call failed or it is closed
    ├── DeliveryError            retryable: produce_all could not deliver every message
    (OffsetLookupError and offsets_for_time live in flows.kafka_offsets: production code)
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import logging
import os
import selectors
import signal
import subprocess
import sys
import time
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

import confluent_kafka
from confluent_kafka import (
    KafkaError,
    Producer,
)

from core.errors import FatalError, JudgeflowError, RetryableError

__all__ = [
    "DeliveryError",
    "KafkaMockError",
    "LibrdkafkaNotFoundError",
    "MockCluster",
    "MockClusterError",
    "main",
    "produce_all",
    "running_mock_process",
    "start_mock_process",
    "stop_mock_process",
]

logger = logging.getLogger(__name__)

_RD_KAFKA_PRODUCER = 0
_RD_KAFKA_CONF_OK = 0
_ERRSTR_SIZE = 512
_VP = ctypes.c_void_p

ProduceItem = bytes | tuple[bytes | str | None, bytes | None, int | None]


class KafkaMockError(JudgeflowError):
    """Base of every error raised by this module."""


class LibrdkafkaNotFoundError(KafkaMockError, FatalError):
    """The librdkafka bundled with confluent-kafka cannot be found or loaded."""


class MockClusterError(KafkaMockError, FatalError):
    """A mock cluster call failed, or the cluster is already closed."""


class DeliveryError(KafkaMockError, RetryableError):
    """`produce_all` could not deliver every message."""


# --- the bundled librdkafka -------------------------------------------------------------

_REINSTALL_FIX = "pip install --force-reinstall 'confluent-kafka==2.16.1'"

# (function, argtypes, restype) of every C function used; pointers stay opaque c_void_p
_SIGNATURES: tuple[tuple[str, list[Any], Any], ...] = (
    ("rd_kafka_version", [], ctypes.c_int),
    ("rd_kafka_err2str", [ctypes.c_int], ctypes.c_char_p),
    ("rd_kafka_conf_new", [], _VP),
    ("rd_kafka_conf_destroy", [_VP], None),
    (
        "rd_kafka_conf_set",
        [_VP, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t],
        ctypes.c_int,
    ),
    ("rd_kafka_new", [ctypes.c_int, _VP, ctypes.c_char_p, ctypes.c_size_t], _VP),
    ("rd_kafka_destroy", [_VP], None),
    ("rd_kafka_mock_cluster_new", [_VP, ctypes.c_int], _VP),
    ("rd_kafka_mock_cluster_destroy", [_VP], None),
    ("rd_kafka_mock_cluster_bootstraps", [_VP], ctypes.c_char_p),
    (
        "rd_kafka_mock_topic_create",
        [_VP, ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
        ctypes.c_int,
    ),
    ("rd_kafka_mock_broker_set_down", [_VP, ctypes.c_int32], ctypes.c_int),
    ("rd_kafka_mock_broker_set_up", [_VP, ctypes.c_int32], ctypes.c_int),
    ("rd_kafka_mock_group_initial_rebalance_delay_ms", [_VP, ctypes.c_int32], None),
)


def _librdkafka_candidates() -> list[Path]:
    pkg_dir = Path(confluent_kafka.__file__).resolve().parent
    patterns = (
        (pkg_dir.parent / "confluent_kafka.libs", "librdkafka*.so*"),  # manylinux (auditwheel)
        (pkg_dir / ".libs", "librdkafka*.so*"),
        (pkg_dir / ".dylibs", "librdkafka*.dylib"),  # macOS (delocate)
        (pkg_dir, "librdkafka*.so*"),
    )
    return [path for folder, pattern in patterns for path in sorted(folder.glob(pattern))]


@functools.cache
def _librdkafka() -> ctypes.CDLL:
    """Load the librdkafka that confluent-kafka itself uses, with typed signatures.

    Loading the very file the extension module links against makes the dynamic loader
    hand back the copy already in the process, so mock and clients share one library.
    """
    candidates = _librdkafka_candidates()
    if not candidates:
        msg = (
            "librdkafka bundled with confluent-kafka not found next to "
            f"{confluent_kafka.__file__}; the mock cluster needs the binary wheel: "
            f"{_REINSTALL_FIX}"
        )
        raise LibrdkafkaNotFoundError(msg)
    try:
        lib = ctypes.CDLL(str(candidates[0]))
        for name, argtypes, restype in _SIGNATURES:
            func = getattr(lib, name)
            func.argtypes = argtypes
            func.restype = restype
    except (OSError, AttributeError) as exc:
        msg = f"cannot use {candidates[0]} as a mock-capable librdkafka ({exc}): {_REINSTALL_FIX}"
        raise LibrdkafkaNotFoundError(msg) from exc
    loaded, expected = lib.rd_kafka_version(), confluent_kafka.libversion()[1]
    if loaded != expected:
        msg = (
            f"{candidates[0]} is librdkafka {loaded:#x} but confluent-kafka uses "
            f"{expected:#x}: {_REINSTALL_FIX}"
        )
        raise LibrdkafkaNotFoundError(msg)
    return lib


def _check(lib: ctypes.CDLL, err: int, what: str) -> None:
    if err != 0:
        msg = f"mock cluster: {what} failed: {lib.rd_kafka_err2str(err).decode()} ({err})"
        raise MockClusterError(msg)


def _new_quiet_handle(lib: ctypes.CDLL) -> int:
    """A producer handle that owns the mock cluster; it never connects and never logs."""
    errstr = ctypes.create_string_buffer(_ERRSTR_SIZE)
    conf = lib.rd_kafka_conf_new()
    if lib.rd_kafka_conf_set(conf, b"log_level", b"0", errstr, _ERRSTR_SIZE) != _RD_KAFKA_CONF_OK:
        lib.rd_kafka_conf_destroy(conf)
        msg = f"mock cluster: log_level rejected: {errstr.value.decode()}"
        raise MockClusterError(msg)
    rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, _ERRSTR_SIZE)
    if not rk:  # on failure the conf is still ours
        lib.rd_kafka_conf_destroy(conf)
        msg = f"mock cluster: rd_kafka_new failed: {errstr.value.decode()}"
        raise MockClusterError(msg)
    return rk


def _destroy(lib: ctypes.CDLL, rk: int, mc: int) -> None:
    # the cluster before its owning handle; both join their threads
    lib.rd_kafka_mock_cluster_destroy(mc)
    lib.rd_kafka_destroy(rk)


# --- the mock cluster -------------------------------------------------------------------


class MockCluster:
    """An in-process mock Kafka cluster on loopback, reachable from other processes.

    Brokers have ids 1..num_brokers and listen on ephemeral ports. The mock keeps only
    about 5 MB per partition; auto-created topics get 4 partitions. Closed on `close()`,
    on leaving the `with` block, on garbage collection or at interpreter exit.
    """

    def __init__(self, num_brokers: int = 1) -> None:
        if num_brokers < 1:
            msg = f"mock cluster: num_brokers must be >= 1, got {num_brokers}"
            raise ValueError(msg)
        lib = _librdkafka()
        rk = _new_quiet_handle(lib)
        mc = lib.rd_kafka_mock_cluster_new(rk, num_brokers)
        if not mc:
            lib.rd_kafka_destroy(rk)
            msg = f"mock cluster: rd_kafka_mock_cluster_new({num_brokers}) failed"
            raise MockClusterError(msg)
        self._lib = lib
        self._mc: int | None = mc
        self._finalizer = weakref.finalize(self, _destroy, lib, rk, mc)
        # consumer groups would otherwise wait 3 s before their first assignment
        lib.rd_kafka_mock_group_initial_rebalance_delay_ms(mc, 0)
        self.num_brokers = num_brokers
        self.bootstrap: str = lib.rd_kafka_mock_cluster_bootstraps(mc).decode()

    def _handle(self) -> int:
        if self._mc is None:
            msg = f"mock cluster {self.bootstrap} is closed"
            raise MockClusterError(msg)
        return self._mc

    def create_topic(self, name: str, partitions: int, replication: int = 1) -> None:
        """Create `name` with `partitions` partitions (AdminClient times out on the mock)."""
        if partitions < 1 or not 1 <= replication <= self.num_brokers:
            # the mock itself would accept more replicas than brokers; Kafka would not
            msg = (
                f"mock cluster: create_topic({name!r}) needs partitions >= 1 and "
                f"1 <= replication <= {self.num_brokers}, got {partitions}, {replication}"
            )
            raise ValueError(msg)
        err = self._lib.rd_kafka_mock_topic_create(self._handle(), name.encode(), partitions, replication)
        _check(self._lib, err, f"create_topic({name!r}, {partitions}, {replication})")

    def broker_down(self, broker_id: int) -> None:
        """Drop the broker's connections and refuse new ones; leadership does not move."""
        err = self._lib.rd_kafka_mock_broker_set_down(self._handle(), broker_id)
        _check(self._lib, err, f"broker_down({broker_id})")

    def broker_up(self, broker_id: int) -> None:
        """Accept connections on the broker again."""
        err = self._lib.rd_kafka_mock_broker_set_up(self._handle(), broker_id)
        _check(self._lib, err, f"broker_up({broker_id})")

    def close(self) -> None:
        """Destroy the cluster and its handle, joining their threads. Idempotent."""
        self._mc = None
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._mc is None

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.bootstrap
        return f"MockCluster(num_brokers={self.num_brokers}, {state})"


# --- host process: one cluster shared by several processes ------------------------------


def _parse_topic(spec: str) -> tuple[str, int]:
    name, _, partitions = spec.partition(":")
    try:
        count = int(partitions) if partitions else 1
    except ValueError:
        count = 0
    if not name or count < 1:
        msg = f"--topic expects NAME[:PARTITIONS] with PARTITIONS >= 1, got {spec!r}"
        raise argparse.ArgumentTypeError(msg)
    return name, count


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m simulators.kafka_mock",
        description=(
            "Host a librdkafka mock Kafka cluster: print its bootstrap address as the first "
            "line on stdout, then serve until SIGTERM or SIGINT."
        ),
    )
    parser.add_argument(
        "--topic", action="append", default=[], type=_parse_topic, metavar="NAME[:PARTITIONS]"
    )
    parser.add_argument("--brokers", type=int, default=1, metavar="N")
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="also write the bootstrap address here (atomically); removed on exit",
    )
    parser.add_argument(
        "--watch-parent",
        action="store_true",
        help="exit when the parent process dies (no cluster outlives a crashed test)",
    )
    return parser.parse_args(argv)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _serve_until_signal(*, watch_parent: bool) -> None:
    parent = os.getppid()
    while signal.sigtimedwait({signal.SIGTERM, signal.SIGINT}, 1.0) is None:
        if watch_parent and os.getppid() != parent:
            return


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m simulators.kafka_mock`; returns the exit code."""
    args = _parse_args(argv)
    # Non-interactive shells start background jobs with SIGINT ignored, and ignored
    # signals are discarded; block both (before librdkafka starts threads) and take
    # them with sigtimedwait, so a signal sent during start-up is not lost.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    if args.ready_file is not None:
        args.ready_file.unlink(missing_ok=True)
    try:
        with MockCluster(args.brokers) as cluster:
            for name, partitions in args.topic:
                cluster.create_topic(name, partitions)
            if args.ready_file is not None:
                _write_atomically(args.ready_file, cluster.bootstrap + "\n")
            print(cluster.bootstrap, flush=True)  # the one line callers wait for
            _serve_until_signal(watch_parent=args.watch_parent)
    except (KafkaMockError, ValueError) as exc:
        sys.stderr.write(f"kafka_mock: {exc}\n")
        return 1
    finally:
        if args.ready_file is not None:
            args.ready_file.unlink(missing_ok=True)
    return 0


def _read_first_line(proc: subprocess.Popen[bytes], timeout_s: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    buf = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                msg = f"kafka mock host (pid {proc.pid}) printed no address in {timeout_s}s"
                raise MockClusterError(msg)
            if not sel.select(remaining):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                msg = f"kafka mock host exited with {proc.wait()} before printing its address"
                raise MockClusterError(msg)
            buf += chunk
    return buf.split(b"\n", 1)[0].decode().strip()


def start_mock_process(
    topics: Mapping[str, int], *, num_brokers: int = 1, timeout_s: float = 30.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m simulators.kafka_mock` with these topics; return it and its bootstrap.

    The host exits if this process dies. Stop it with `stop_mock_process`, or use
    `running_mock_process`.
    """
    project_root = str(Path(__file__).resolve().parent.parent)
    python_path = os.pathsep.join(filter(None, [project_root, os.environ.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "simulators.kafka_mock", "--watch-parent"]
    cmd += ["--brokers", str(num_brokers)]
    for name, partitions in topics.items():
        cmd += ["--topic", f"{name}:{partitions}"]
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": python_path},
    )
    try:
        return proc, _read_first_line(proc, timeout_s)
    except BaseException:
        stop_mock_process(proc)
        raise


def stop_mock_process(proc: subprocess.Popen[bytes], *, timeout_s: float = 10.0) -> int:
    """SIGTERM the host (SIGKILL if it does not exit in time); return its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


@contextmanager
def running_mock_process(
    topics: Mapping[str, int], *, num_brokers: int = 1, timeout_s: float = 30.0
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`start_mock_process` for a `with` block; the host is stopped on leaving it."""
    proc, bootstrap = start_mock_process(topics, num_brokers=num_brokers, timeout_s=timeout_s)
    try:
        yield proc, bootstrap
    finally:
        stop_mock_process(proc)


def _producer_config(
    bootstrap: str, timeout_s: float, log: logging.Logger, config: Mapping[str, Any] | None
) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "batch.num.messages": 100_000,
        # whole test or benchmark data sets fit in the queue without BufferError
        "queue.buffering.max.messages": 2_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
        # undeliverable messages fail within the budget instead of hanging in flush
        "message.timeout.ms": max(1, int(timeout_s * 1000)),
        "logger": log,
    }
    conf.update(config or {})
    return conf


def _split(item: ProduceItem) -> tuple[bytes | str | None, bytes | None, int]:
    if isinstance(item, bytes | bytearray | memoryview):
        return None, bytes(item), 0
    key, value, ts_ms = item
    return key, value, ts_ms or 0  # 0 lets librdkafka stamp the current time


def produce_all(
    bootstrap: str,
    topic: str,
    values: Iterable[ProduceItem],
    *,
    partition: int | None = None,
    timeout_s: float = 60.0,
    config: Mapping[str, Any] | None = None,
    log: logging.Logger | None = None,
) -> int:
    """Produce every value to `topic`, flush, and raise if any delivery failed.

    Args:
        bootstrap: `bootstrap.servers` of the cluster.
        topic: the target topic.
        values: plain values, or `(key, value, ts_ms)` tuples; `ts_ms=None` means now.
        partition: send everything to this partition instead of by key hash.
        timeout_s: delivery budget; also each message's `message.timeout.ms`.
        config: producer settings overriding the throughput defaults.
        log: logger for librdkafka's messages (default: this module's).

    Returns:
        how many messages were delivered.

    Raises:
        DeliveryError: some messages failed or were still queued after `timeout_s`.
    """
    producer = Producer(_producer_config(bootstrap, timeout_s, log or logger, config))
    failures: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            failures.append(err)

    target = -1 if partition is None else partition  # -1: librdkafka's partitioner decides
    sent = 0
    for item in values:
        key, value, ts_ms = _split(item)
        while True:
            try:
                producer.produce(topic, value, key, target, on_delivery=on_delivery, timestamp=ts_ms)
                break
            except BufferError:  # queue full: serve deliveries, then retry
                producer.poll(0.1)
        sent += 1
        if sent % 10_000 == 0:
            producer.poll(0)
    undelivered = producer.flush(timeout_s)
    if undelivered:
        producer.purge()  # fail what is left now, so the producer can go away
        producer.flush(0)
    if undelivered or failures:
        first = failures[0].str() if failures else "timed out"
        msg = (
            f"produce_all({topic!r}): {len(failures)} of {sent} failed and {undelivered} "
            f"still queued after {timeout_s}s; first error: {first}"
        )
        raise DeliveryError(msg)
    return sent


if __name__ == "__main__":
    sys.exit(main())

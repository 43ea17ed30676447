"""Multi-host runs through JAX's own runtime: ``jax.distributed.initialize`` and process-local → global batches.

Recipe (one process per host, or several on one machine for testing):

1. every process calls :func:`initialize` with the same coordinator address and process count and its own id
   (from :class:`DistributedConfig`, or the environment ``MOJAX_COORDINATOR_ADDRESS``, ``MOJAX_NUM_PROCESSES``,
   ``MOJAX_PROCESS_ID``; on TPU pods and SLURM ``auto=True`` lets JAX detect them);
2. the mesh spans ``jax.devices()`` — every device of every process;
3. each process reads only its share of each global batch (:func:`process_batch_slice`) and :func:`shard_batch`
   assembles the global ``jax.Array`` with ``jax.make_array_from_process_local_data``;
4. the jitted step is identical on every process; checkpoints are written cooperatively by Orbax.

On CPU the cross-process collectives need ``gloo`` (``cpu_collectives="gloo"``, the default here for CPU).

Failing fast (measured on 127.0.0.1 with gloo, jax 0.10.2). Left to JAX alone, an unreachable coordinator means
``initialization_timeout`` (300 s) of silence and then a fatal abort saying "another task died"; a killed peer leaves
the survivors blocked in a collective until the coordination service misses its heartbeats (``heartbeat_timeout``,
100 s), then they abort (SIGABRT, a C++ stack trace) without a word about their state. JAX's hook for that moment
(``missed_heartbeat_callback``) cannot be used from Python in this jaxlib (the status argument does not convert:
``std::bad_cast``). So :func:`initialize`:

- announces in one line what it waits for, and with what timeout;
- (process ≠ 0) first waits for the coordinator's port to accept TCP connections: unreachable → one-line
  :class:`DistributedInitError` after ``initialization_timeout``, before JAX is involved;
- bounds JAX's own registration by the same timeout with a timer that prints one line and exits (code 2) before JAX's
  abort (e.g. process 0 whose peers never join);
- starts a peer watch (:class:`PeerWatch`): every process keeps one TCP connection to every other; the kernel closes
  a dead process's sockets, so a SIGKILLed or crashed peer is seen within milliseconds. The survivors then print one
  line — which process died, the last step and the last complete checkpoint (:func:`note_progress`), and why no new
  checkpoint is written: an Orbax save is cooperative, every process writes its shards and meets the others at
  barriers, so it cannot complete without the dead one — and exit with code 75 (EX_TEMPFAIL: rerun to resume). A
  process that ends through Python (normally, or ``sys.exit``) says ``bye`` first (at exit, or :func:`mark_done`), so
  its exit is not a death; one that ends with an uncaught exception (or after :func:`mark_failed`) does not, so its
  peers stop at once instead of waiting in a collective. A partition that keeps sockets open is still caught by JAX's
  heartbeat, after ``heartbeat_timeout``.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from mojax.train.state import batch_axis, batch_shardings


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """How this process joins a multi-process run (empty/None fields fall back to ``MOJAX_*`` env variables).

    Attributes:
      coordinator_address: ``host:port`` of process 0's coordination service.
      num_processes: total number of processes; 1 (or unset with no address) = single-process run, no-op.
      process_id: this process's index in ``[0, num_processes)``.
      auto: call ``jax.distributed.initialize()`` without arguments (TPU pods, SLURM, Open MPI auto-detection).
      cpu_collectives: CPU cross-process collectives implementation (``"gloo"``); empty = JAX's default.
      initialization_timeout: seconds to wait for the coordinator and for every process to join.
      heartbeat_timeout: seconds without heartbeats after which JAX declares a process dead (the backstop for failures
        the peer watch cannot see, e.g. a network partition).
      shutdown_timeout: seconds the processes wait for each other at exit.
      peer_watch: watch the other processes' sockets and exit promptly (code 75) when one dies.
    """

    coordinator_address: str = ""
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False
    cpu_collectives: str = "gloo"
    initialization_timeout: int = 120
    heartbeat_timeout: int = 60
    shutdown_timeout: int = 60
    peer_watch: bool = True

    def __post_init__(self):
        for name in ("initialization_timeout", "heartbeat_timeout", "shutdown_timeout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 second, got {getattr(self, name)}")


class DistributedInitError(RuntimeError):
    """This process could not join the multi-process run (coordinator unreachable, peers missing); one-line message."""


PEER_DIED_EXIT_CODE = 75  # EX_TEMPFAIL: the run can be resumed by running it again on every process


def resolve(config: DistributedConfig, environ: Mapping[str, str] | None = None) -> DistributedConfig:
    """Fill unset fields of ``config`` from ``MOJAX_COORDINATOR_ADDRESS`` / ``MOJAX_NUM_PROCESSES`` / ``MOJAX_PROCESS_ID``."""
    env = os.environ if environ is None else environ
    address = config.coordinator_address or env.get("MOJAX_COORDINATOR_ADDRESS", "")
    num = config.num_processes if config.num_processes is not None else env.get("MOJAX_NUM_PROCESSES")
    pid = config.process_id if config.process_id is not None else env.get("MOJAX_PROCESS_ID")
    num = None if num is None else int(num)
    pid = None if pid is None else int(pid)
    return dataclasses.replace(config, coordinator_address=address, num_processes=num, process_id=pid)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"coordinator_address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


def _wait_for_port(address: str, deadline: float) -> None:
    """Block until ``address`` accepts a TCP connection, or raise DistributedInitError at ``deadline``."""
    host, port = _split_address(address)
    last: OSError | None = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                return
        except OSError as e:
            last = e
        if time.monotonic() >= deadline:
            raise DistributedInitError(f"could not reach the coordinator at {address} ({last.strerror or last}): is "
                                       "process 0 running and is the address reachable from here? "
                                       "(DistributedConfig.initialization_timeout)")
        time.sleep(0.2)


def initialize(config: DistributedConfig = DistributedConfig()) -> bool:
    """Join the multi-process run described by ``config`` (after :func:`resolve`); returns whether it did.

    A single-process config (no address and ``num_processes`` unset or 1, and not ``auto``) is a no-op, so the same
    entry point runs on a laptop. Must run before anything touches a JAX device. See the module docstring for the
    timeouts and the peer watch.

    Raises:
      ValueError: an incomplete multi-process config (address, count and id are all needed) or an id out of range.
      DistributedInitError: the coordinator did not accept a connection within ``initialization_timeout``.
    """
    config = resolve(config)
    timeouts = dict(initialization_timeout=config.initialization_timeout,
                    heartbeat_timeout_seconds=config.heartbeat_timeout,
                    shutdown_timeout_seconds=config.shutdown_timeout)
    if config.auto:
        jax.distributed.initialize(**timeouts)
        return True
    if not config.coordinator_address and config.num_processes in (None, 1):
        return False
    if not config.coordinator_address or config.num_processes is None or config.process_id is None:
        raise ValueError("a multi-process run needs coordinator_address, num_processes and process_id (or the "
                         f"MOJAX_* environment variables); got {config}")
    if config.num_processes < 1 or not 0 <= config.process_id < config.num_processes:
        raise ValueError(f"process_id must be in [0, num_processes={config.num_processes}), got {config.process_id}")
    me, n, address = config.process_id, config.num_processes, config.coordinator_address
    deadline = time.monotonic() + config.initialization_timeout
    _say(f"mojax: process {me} of {n}: joining the run at {address} (waiting up to "
         f"{config.initialization_timeout} s for the coordinator and all {n} processes)")
    if me != 0:
        _wait_for_port(address, deadline)
    # JAX aborts the process (SIGABRT, a stack trace, "another task died") when registration times out: give it a
    # few seconds more than ours, and exit with one line when ours runs out.
    joined = threading.Event()

    def expire():
        if not joined.wait(max(0.0, deadline - time.monotonic())):
            _say(f"mojax: process {me} of {n}: not all {n} processes joined at {address} within "
                 f"{config.initialization_timeout} s (DistributedConfig.initialization_timeout); giving up")
            os._exit(2)

    threading.Thread(target=expire, name="mojax-init-timeout", daemon=True).start()
    if config.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    timeouts["initialization_timeout"] = config.initialization_timeout + 5
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=me, **timeouts)
    joined.set()
    if config.peer_watch and n > 1:
        global _WATCH
        _WATCH = PeerWatch(me, n, address, timeout=max(1.0, deadline - time.monotonic()))
    return True


_PROGRESS: dict[str, Any] = {"step": None, "checkpoint_step": None, "checkpoint_dir": None}
_WATCH: "PeerWatch | None" = None


def note_progress(*, step: int | None = None, checkpoint_step: int | None = None,
                  checkpoint_dir: str | None = None) -> None:
    """Record the run's progress for the message printed when a peer dies (the loop calls it; cheap)."""
    for key, value in (("step", step), ("checkpoint_step", checkpoint_step), ("checkpoint_dir", checkpoint_dir)):
        if value is not None:
            _PROGRESS[key] = value


def mark_done() -> None:
    """Tell the other processes now that this one ends normally (its exit is then not reported as a death)."""
    if _WATCH is not None:
        _WATCH.close(clean=True)


def mark_failed() -> None:
    """Make this process's exit count as a failure for its peers (for handlers that catch an error and exit)."""
    global _FAILED
    _FAILED = True


_FAILED = False


def _excepthook(previous):
    def hook(*args):
        mark_failed()
        previous(*args)
    return hook


def _newest_complete_checkpoint(directory: str | None) -> int | None:
    # Orbax renames a step directory into place only when it is complete: the numeric names are the complete ones.
    try:
        steps = [int(p) for p in os.listdir(directory) if p.isdigit()] if directory else []
    except OSError:
        return None
    return max(steps) if steps else None


def peer_death_message(dead: int, me: int, how: str) -> str:
    """The one line a survivor prints: who died, how far the run got, and why nothing more is saved."""
    step, where = _PROGRESS["step"], _PROGRESS["checkpoint_dir"]
    ckpt = _newest_complete_checkpoint(where)
    if ckpt is None:
        ckpt = _PROGRESS["checkpoint_step"]
    at = "" if step is None else f" at step {step}"
    last = (f"the last complete checkpoint is step {ckpt}" + (f" in {where}" if where else "")) if ckpt is not None \
        else "no checkpoint was completed"
    return (f"mojax: process {me}: process {dead} {how}{at}; no new checkpoint can be written without it (every "
            f"process writes its shards and meets the others at barriers); {last}; exiting with code "
            f"{PEER_DIED_EXIT_CODE} — rerun on all processes to resume")


class PeerWatch:
    """One TCP connection between every pair of processes; a peer's socket closing without a goodbye = it died.

    Each process listens on an ephemeral port, publishes ``host:port`` in JAX's key-value store, connects to every
    lower-numbered process and accepts the higher-numbered ones. A thread waits on all sockets; end-of-file without
    the ``bye`` that :meth:`close` sends means the peer process is gone: print :func:`peer_death_message`, exit 75.
    """

    _BYE = b"bye\n"

    def __init__(self, me: int, n: int, coordinator: str, *, timeout: float = 60.0,
                 on_death=None):
        from jax._src import distributed as _jax_distributed  # the KV store of JAX's coordination client

        client = _jax_distributed.global_state.client
        self.me, self.n = me, n
        self.on_death = on_death or self._exit
        self._closing = False
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", 0))
        listener.listen(n)
        host = self._local_host(coordinator)
        client.key_value_set(f"mojax/peerwatch/{me}", f"{host}:{listener.getsockname()[1]}")
        self.peers: dict[socket.socket, int] = {}
        for other in range(me):
            peer_host, peer_port = _split_address(client.blocking_key_value_get(f"mojax/peerwatch/{other}",
                                                                                int(timeout * 1000)))
            conn = socket.create_connection((peer_host, peer_port), timeout=timeout)
            conn.sendall(f"{me}\n".encode())
            self.peers[conn] = other
        listener.settimeout(timeout)
        for _ in range(me + 1, n):
            conn, _addr = listener.accept()
            other = int(conn.recv(16).split(b"\n")[0])
            self.peers[conn] = other
        listener.close()
        for conn in self.peers:
            conn.settimeout(None)
        self._thread = threading.Thread(target=self._watch, name="mojax-peer-watch", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)
        sys.excepthook = _excepthook(sys.excepthook)

    @staticmethod
    def _local_host(coordinator: str) -> str:
        """This machine's address as seen on the route to the coordinator (no packet is sent)."""
        host, port = _split_address(coordinator)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((host, port))
                return probe.getsockname()[0]
            except OSError:
                return "127.0.0.1"

    def _watch(self) -> None:
        open_ = dict(self.peers)
        while open_:
            try:
                ready, _, _ = select.select(list(open_), [], [])
            except (OSError, ValueError):  # our own close() closed a socket under select
                return
            for conn in ready:
                try:
                    data = conn.recv(64)
                except OSError:
                    data = b""
                other = open_.pop(conn)
                if self._closing:
                    return
                if data.startswith(self._BYE.strip()):
                    continue  # the peer finished normally
                self.on_death(other, "died or failed (its connection closed)" if not data else "sent an unknown message")
                return

    def _at_exit(self) -> None:
        if not _FAILED:
            self.close(clean=True)
            return
        # Failed: tell the peers (they stop at once) and skip JAX's exit barrier, which would wait for them
        # ``shutdown_timeout`` seconds and then abort this process with a C++ stack trace.
        self.close(clean=False)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)

    def _exit(self, dead: int, how: str) -> None:
        _say(peer_death_message(dead, self.me, how))
        os._exit(PEER_DIED_EXIT_CODE)

    def close(self, clean: bool = True) -> None:
        """Stop watching; with ``clean`` tell the peers this process ends normally."""
        if self._closing:
            return
        self._closing = True
        for conn in self.peers:
            try:
                if clean:
                    conn.sendall(self._BYE)
                conn.close()
            except OSError:
                pass


def process_batch_slice(global_batch: int, *, process_index: int | None = None,
                        process_count: int | None = None) -> slice:
    """The examples ``[start, stop)`` of a global batch that this process loads (contiguous, equal shares).

    Contiguous blocks in process order match how a batch-sharded array over ``jax.devices()`` is laid out, which is
    what ``jax.make_array_from_process_local_data`` expects of the local data.
    """
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    if global_batch % count:
        raise ValueError(f"global batch {global_batch} does not split over {count} processes")
    share = global_batch // count
    return slice(index * share, (index + 1) * share)


def local_batch(batch: Mapping[str, Any], *, process_index: int | None = None,
                process_count: int | None = None) -> dict[str, np.ndarray]:
    """This process's share of a *global* host batch (each entry sliced on its example axis)."""
    out = {}
    for name, x in batch.items():
        x = np.asarray(x)
        axis = batch_axis(name, x.ndim)
        sl = process_batch_slice(x.shape[axis], process_index=process_index, process_count=process_count)
        out[name] = x[(slice(None),) * axis + (sl,)]
    return out


def shard_batch(local: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
    """Global ``jax.Array`` batch from this process's local share, split over the ``"batch"`` mesh axes.

    Each entry's example axis grows by the process count; in a single-process run this is a plain ``device_put``.
    """
    local = {k: np.asarray(v) for k, v in local.items()}
    shardings = batch_shardings(local, mesh)
    count = jax.process_count()
    if count == 1:  # one batched transfer: ~0.1 ms CPU per batch instead of ~0.26 ms entry by entry (fit's loop)
        return jax.device_put(local, shardings)
    out = {}
    for name, x in local.items():
        shape = list(x.shape)
        if x.ndim:
            shape[batch_axis(name, x.ndim)] *= count
        out[name] = jax.make_array_from_process_local_data(shardings[name], x, tuple(shape))
    return out

"""How a process starts and ends: every `python -m` entry and the console script go through
`run_entry`, so multi-host set-up, the compilation cache, log levels and the mapping from errors
to exit statuses live in one place (see base/errors.py for the statuses)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Callable

# Set before anything loads TensorFlow's or XLA's native libraries, which read it once: else
# their advisory logs (a GPU probe's "failed call to cuInit" on a machine without a GPU) come
# before a command's own lines. The console script imports this module before any of them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from prompt_transfer.base import environment, errors, files  # noqa: E402
from prompt_transfer.base.errors import UserError  # noqa: E402

_started = False
# What this process holds open that runs threads of its own (orbax's checkpoint managers): a
# command stopped by an error closes them before its one line, so that nothing prints after it.
_open: weakref.WeakSet = weakref.WeakSet()


class LaunchError(UserError):
    pass


@dataclasses.dataclass(frozen=True)
class MultiHost:
    """T5X's multi-process flags. With `coordinator_address` (and the count and index) the
    processes join each other; `multiprocess_gpu` alone, $PROMPT_TRANSFER_DISTRIBUTED=1, or a
    Cloud TPU VM lets JAX find them (Slurm, Open MPI, the TPU VM's metadata)."""

    multiprocess_gpu: bool = False
    coordinator_address: str | None = None
    process_count: int | None = None
    process_index: int | None = None
    initialization_timeout: int | None = None  # seconds to wait for the others (JAX's: 300)

    @property
    def wanted(self) -> bool:
        if self.multiprocess_gpu or self.coordinator_address:
            return True
        chosen = environment.distributed()
        return on_cloud_tpu() if chosen is None else chosen

    def check(self) -> None:
        if self.initialization_timeout is not None and self.initialization_timeout < 1:
            raise LaunchError(
                f"--initialization_timeout={self.initialization_timeout} must be a whole number "
                "of seconds >= 1 (how long a process waits for the others to join)"
            )
        given = {
            "--process_count": self.process_count,
            "--process_index": self.process_index,
        }
        if not self.coordinator_address:
            extra = [name for name, value in given.items() if value is not None]
            if extra:
                verb = "need" if len(extra) > 1 else "needs"
                raise LaunchError(
                    f"{' and '.join(extra)} {verb} --coordinator_address=HOST:PORT (process "
                    "0's address, the same on every process)"
                )
            return
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise LaunchError(
                f"--coordinator_address needs {' and '.join(missing)} too (every process "
                "gets the same count and its own index, 0 on the coordinator's host)"
            )
        if self.process_count < 1 or not 0 <= self.process_index < self.process_count:
            raise LaunchError(
                f"--process_index={self.process_index} is not in 0..{self.process_count - 1} "
                f"(--process_count={self.process_count})"
            )


PCI_DEVICES = "/sys/bus/pci/devices"
# TPU chips on the PCI bus: Google's vendor id and the chips' device ids, v3 to TPU7x (Google's
# virtual NIC and disks share the vendor id, so the device id decides).
TPU_PCI_IDS = ("0x1ae0", {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})


def on_cloud_tpu(devices: str | None = None) -> bool:
    """Whether this host has TPU chips (a Cloud TPU VM): there every host of a slice joins the
    job by itself, as T5X users expect, and JAX finds the others in the VM's metadata."""
    vendor, chips = TPU_PCI_IDS
    devices = devices or PCI_DEVICES
    try:
        entries = os.listdir(devices)
    except OSError:
        return False
    for entry in entries:
        try:
            ids = [_read(os.path.join(devices, entry, name)) for name in ("vendor", "device")]
        except OSError:
            continue
        if ids[0] == vendor and ids[1] in chips:
            return True
    return False


def _read(file: str) -> str:
    with open(file) as f:
        return f.read().strip()


def join(multihost: MultiHost) -> None:
    """Join the other processes of a multi-host job (before anything touches a device)."""
    import jax

    # Hosts without an accelerator (tests, CPU clusters) talk through gloo; GPUs and TPUs
    # have their own collectives and ignore this.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeout = multihost.initialization_timeout  # None: JAX's own default
    jax.distributed.initialize(
        coordinator_address=multihost.coordinator_address,
        num_processes=multihost.process_count,
        process_id=multihost.process_index,
        **({"initialization_timeout": timeout} if timeout else {}),
    )


def barrier(name: str) -> None:
    """Every process waits here for the others (a no-op in a single-process job): after process
    0 wrote files the others are about to read."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def chief_first(name: str, work: Callable[[], object]):
    """`work` on process 0, then on the others once it is done (they find its files written
    and write nothing: see files.is_chief); returns `work`'s result on each process."""
    if files.is_chief():
        result = work()
        barrier(name)
        return result
    barrier(name)
    return work()


# Measured on 2 cores: a 2-step offline_small run keeps 2 programs (its step and evaluation)
# instead of 24 and starts as fast from a warm cache (9.4 s against 9.3 s); test_multitask's 882
# writes at 0 s had cost 31 of its 141 s (35 ms each, the cap's scan of the folder).
MIN_CACHED_COMPILE_S = 0.3


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Keep compiled steps on disk (JAX's persistent cache), keyed by their HLO.

    Each run jits its own step function, so a flow of many runs with the same shapes (the SPoT
    flow, a sweep) would compile the same program again and again; with the cache only the
    first compiles (measured: a 2-step offline_small run 16.5 s -> 5.5 s). JAX's own
    JAX_COMPILATION_CACHE_DIR wins; else `directory`, else $PROMPT_TRANSFER_JAX_CACHE or
    ~/.cache/prompt_transfer/jax. Returns the directory in use.

    Only programs that took MIN_CACHED_COMPILE_S to compile are kept: each write under a size
    cap reads every entry's access time first, so keeping each small eager operation's program
    made a write cost more than compiling it again, and more as the cache grew.
    """
    import jax

    if jax.config.jax_compilation_cache_dir is None:
        jax.config.update("jax_compilation_cache_dir", directory or environment.jax_cache_dir())
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_CACHED_COMPILE_S)
        jax.config.update("jax_compilation_cache_max_size", 2**30)  # oldest entries go first
    return jax.config.jax_compilation_cache_dir


def start(multihost: MultiHost | None = None) -> None:
    """Once per process: quiet advisory logs, join a multi-host job, enable the cache."""
    global _started
    multihost = multihost or MultiHost()
    multihost.check()
    if _started:
        return
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # SeqIO's advisory warnings drown progress
    if multihost.wanted:  # multi-host: join the other processes first
        join(multihost)
    enable_compilation_cache()
    _started = True


def track(resource) -> None:
    """Hold `resource` (anything with `close()`) until `untrack`: an entry that stops on an
    error closes it first (see `run_entry`)."""
    _open.add(resource)


def untrack(resource) -> None:
    _open.discard(resource)


def one_line_warning(message, category, filename, lineno, line=None) -> str:
    """A warning on the console as one line (a skipped library entry, say), not Python's two:
    the file and the source line that raised it say nothing to a user."""
    text = str(message).strip().splitlines()
    return f"prompt-transfer: warning: {text[0] if text else category.__name__}\n"


class _MainThreadOnly:
    """sys.stderr for the main thread; what other threads write is dropped."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if threading.current_thread() is threading.main_thread():
            return self._stream.write(text)
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


@contextlib.contextmanager
def quiet_threads_on_failure():
    """Within the block, a failure leaves the other threads silent for the rest of the
    process: when one of orbax's reads of a damaged checkpoint fails, its event loop closes
    under the reads still running in tensorstore's threads, which print "Event loop is closed"
    tracebacks before and after the one-line refusal (issue 38). While the block runs, only
    the main thread writes to stderr; after a success, every thread again."""
    before = sys.stderr
    if not isinstance(before, _MainThreadOnly):
        sys.stderr = _MainThreadOnly(before)
    try:
        yield
    except BaseException:
        raise  # the threads stay silent: their reads may still be failing
    else:
        sys.stderr = before


def close_tracked(keep=()) -> None:
    """Close what is still open but `keep` (a command stopped between opening and closing it).
    A close that fails is passed over: the error that stopped the command is the one to tell."""
    for resource in [r for r in _open if r not in keep]:
        _open.discard(resource)
        with contextlib.suppress(Exception):
            resource.close()


def run_entry(command: str, body: Callable[[], object], multihost: MultiHost | None = None) -> int:
    """Run `body` as the command `command`; returns the process exit status (`body`'s own when
    it returns an int).

    A user error, a diverged run or a pre-emption prints one line naming the command and exits
    with its own status (2, 3, 4), and nothing after it: what the command left open is closed
    first. Anything else is a bug and keeps its traceback.
    """
    earlier = weakref.WeakSet(_open)  # a caller's own (a test's), not this command's to close
    warnings.formatwarning = one_line_warning
    try:
        start(multihost)
        status = body()
    except BaseException as e:
        close_tracked(keep=earlier)
        code = errors.exit_code(e)
        if code is None:
            raise
        print(f"prompt-transfer {command}: error: {errors.one_line(e)}", file=sys.stderr)
        return code
    # A command may end with its own status (`plan` passes on its child's); else 0.
    return status if type(status) is int else errors.EXIT_OK

"""A booted guest with an SSH shell: the stages wired together.

    with guest_session() as g:
        g.run("insmod /buddylab.ko").check()

Stages and their timings are recorded in `Session.timings`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from buddylab import cachefs
from buddylab.paths import cache_dir, images_dir
from buddylab.kernel.recipe import GuestExtras, KernelPins, load_kernel_pins
from buddylab.errors import BuddylabError, GuestCommandError
from buddylab.guest.image import GuestImage, HostKey, build_image
from buddylab.protocol import GUEST_MODULE_PATH
from buddylab.kernel.kbuild import build_module
from buddylab.kernel.kinds import provision
from buddylab.kernel.provision import Kernel
from buddylab.guest.qemu import Qemu, QemuConfig, free_port, probe_kvm
from buddylab.guest import snapshot
from buddylab.guest.snapshot import StartState, Starting, start_guest
from buddylab.guest.workdir import private_workdir

if TYPE_CHECKING:   # paramiko is imported while QEMU loads the snapshot (snapshot.start_guest)
    from buddylab.guest.command import CommandResult
    from buddylab.guest.ssh import ClientKey, GuestShell


def children_cpu() -> float:
    """CPU seconds of this process's children so far (QEMU, zstd): those that ended
    and, every thread, those that run (/proc/PID/task/*/schedstat)."""
    ended = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ended.ru_utime + ended.ru_stime
    for children in Path("/proc/self/task").glob("*/children"):
        try:
            pids = children.read_text().split()
        except OSError:
            continue
        for pid in pids:
            for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
                try:
                    total += int(stat.read_text().split()[0]) / 1e9
                except (OSError, ValueError, IndexError):
                    pass      # a thread or child that just ended
    return total


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)
    # Finer steps of a real boot or restore, in order: (what just ended,
    # time.monotonic(), this process's CPU seconds, its children's: children_cpu()).
    # CLOCK_MONOTONIC is one clock for every process, so a benchmark that
    # started the process can place them (bench/snapshot_bench.py); the CPU
    # seconds say what each step cost whatever else the machine runs.
    marks: list[tuple[str, float, float, float]] = field(default_factory=list)

    def mark(self, name: str) -> None:
        self.marks.append((name, time.monotonic(), time.process_time(), children_cpu()))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.monotonic() - start


@dataclass
class Prepared:
    """What a boot needs, made once per run: kernel, module, image."""

    kernel: Kernel
    module: Path
    image: GuestImage
    accel: str
    accel_why: str
    vmlinuz: Path
    extras: GuestExtras = GuestExtras()


def prepare(pins: KernelPins | None = None, ko: Path | None = None,
            timings: Timings | None = None, extras: GuestExtras | None = None) -> Prepared:
    """Kernel, module, image for `pins`; `extras` add to the recipe's [guest] modules and QEMU arguments."""
    timings = timings or Timings()
    pins = pins or load_kernel_pins()
    extras = pins.guest.plus(extras or GuestExtras())
    with timings.stage("provision"):
        # The old layouts named kernels after the shipped recipes, guest tools after their sources.
        images = images_dir()
        cachefs.remove_old_layouts(cache_dir(), [p.stem for p in images.glob("*.toml")],
                                   [p.stem for p in (images / "guest-tools").glob("*.c")])
        kernel = provision(pins)
    with timings.stage("module build"):
        module = ko if ko is not None else build_module(kernel)
        _check_module(kernel, module)
    with timings.stage("image"):
        image = build_image(kernel, module, extras.modules)
    with timings.stage("accel probe"):
        kvm, why = probe_kvm(kernel.vmlinuz)
    return Prepared(kernel, module, image, "kvm" if kvm else "tcg", why, kernel.vmlinuz, extras)


def _check_module(kernel: Kernel, module: Path) -> None:
    """elfcheck.check_module against the kernel; its verdict remembered while the
    module, Module.symvers and the kernel's module directory are unchanged (the
    ELF reading and pyelftools' import are a large part of a warm run)."""
    def check() -> tuple[str, list[Path]]:
        from buddylab.kernel import elfcheck

        elfcheck.check_module(module, elfcheck.kernel_vermagic(kernel.modules_dir),
                              kernel.symvers.read_text())
        return "loads", [module, kernel.symvers, kernel.modules_dir]
    key = f"{module.resolve()} {kernel.modules_dir.resolve()}"
    cachefs.remembered(cache_dir(), "elfcheck", key, check)


class Session:
    """A running guest: QEMU, its serial log, and one SSH connection."""

    def __init__(self, qemu: Qemu, shell: GuestShell, workdir: Path, timings: Timings,
                 host_key: HostKey, client_key: ClientKey, starting: Starting) -> None:
        self.qemu = qemu
        self._starting = starting
        self._start: StartState | None = None
        self.shell = shell
        self.workdir = workdir
        self.timings = timings
        self.module_path = GUEST_MODULE_PATH
        self._host_key = host_key
        self._client_key = client_key

    @property
    def start(self) -> StartState:
        """Booted or restored, and whether from the snapshot's reference state.

        Read with the first guest command (`run`); asked before, it costs a
        command of its own."""
        if self._start is None:
            self.run("true").check()
        assert self._start is not None
        return self._start

    @property
    def start_read(self) -> bool:
        return self._start is not None

    def open_shell(self) -> GuestShell:
        """A second, independent SSH connection (the caller closes it)."""
        from buddylab.guest.ssh import GuestShell

        return GuestShell(self.qemu.config.ssh_port, self._host_key, self._client_key,
                          console_tail=self.qemu.serial_tail)

    def run(self, command: str, timeout: float = 60.0, stdin: bytes | None = None) -> CommandResult:
        """Run a guest command; a guest crash during it is raised as GuestCrashed.

        The first one reads the guest's start state too (snapshot.with_start_state)."""
        first = self._start is None
        try:
            result = self.shell.run(snapshot.with_start_state(command) if first else command,
                                    timeout=timeout, stdin=stdin, shown=command)
        except BuddylabError:
            self.qemu.check_crash()
            raise
        self.timings.mark("guest command (an SSH channel)")
        self.qemu.check_crash()
        if first:
            split = snapshot.split_start_state(result.stdout)
            if split is None:
                raise GuestCommandError(f"the guest printed no start state "
                                        f"({snapshot.START_STATE_FILE}): {result.stderr.strip()}")
            lines, stdout = split
            self._start = self._starting.finish(lines)
            result = dataclasses.replace(result, stdout=stdout)
        return result

    def abandon_start(self) -> None:
        """The session ends without its start state: a snapshot saved by it is not kept."""
        if self._start is None:
            self._starting.abandon()


@contextlib.contextmanager
def boot(prepared: Prepared, memory_mib: int = 512, cpus: int = 1,
         ready_timeout: float = 60.0, extra_append: list[str] | None = None,
         timings: Timings | None = None, keep_dir: Path | None = None,
         fresh_boot: bool = False, meanwhile: Callable[[], None] = lambda: None
         ) -> Iterator[Session]:
    """Bring the prepared guest up and yield a Session; QEMU is gone on exit.

    The guest is restored from a snapshot of an earlier boot of the same
    guest when there is one (buddylab.guest.snapshot), unless `fresh_boot`.
    `meanwhile` is the caller's own work (imports) that can run while the
    guest handles its resume line (reseed, quiet point, start state).
    """
    timings = timings or Timings()
    timings.mark("until the boot (python, arguments, kernel, module, image)")
    with private_workdir() as workdir:
        client_key = functools.cache(lambda: _client_key(workdir))
        config = QemuConfig(prepared.vmlinuz, prepared.image.initramfs,
                            memory_mib=memory_mib, cpus=cpus, accel=prepared.accel,
                            ssh_port=free_port(),
                            extra_append=[*prepared.extras.append, *(extra_append or [])],
                            extra_args=list(prepared.extras.qemu_args))
        qemu: Qemu | None = None
        shell = None
        session: Session | None = None
        try:
            with timings.stage("boot to ssh"):
                started = start_guest(config, workdir, prepared.image.host_key, client_key,
                                      ready_timeout, fresh_boot, mark=timings.mark,
                                      meanwhile=meanwhile)
                qemu, shell = started.qemu, started.shell
            session = Session(qemu, shell, workdir, timings, prepared.image.host_key,
                              client_key(), started.starting)
            yield session
            # Read while the guest runs (a session that ran no command): results ask
            # for it after the power-off, and a snapshot saved by this run is kept
            # once its reference is known.
            if not session.start_read:
                session.start
        finally:
            if session is not None:
                session.abandon_start()
            if qemu is not None:
                timings.mark("the caller's own work (models) after its commands")
                with timings.stage("power-off"):
                    _power_off(qemu, shell)
                timings.mark("power-off")
            # start_guest stops any QEMU it could not bring up; its log stays.
            serial = workdir / "serial.log"
            if keep_dir is not None and serial.exists():
                keep_dir.mkdir(parents=True, exist_ok=True)
                (keep_dir / "serial.log").write_bytes(serial.read_bytes())


def _client_key(workdir: Path) -> ClientKey:
    from buddylab.guest.ssh import make_client_key

    return make_client_key(workdir)


def _power_off(qemu: Qemu, shell: GuestShell | None) -> None:
    # The guest has no disk and nothing to flush: QMP quit ends it at once
    # (a power-off from inside took 0.3 s), SIGKILL if QEMU does not exit.
    if shell is not None:
        shell.close()
    qemu.stop(grace=0.0)


@contextlib.contextmanager
def guest_session(ko: Path | None = None, memory_mib: int = 512, cpus: int = 1,
                  extra_append: list[str] | None = None,
                  fresh_boot: bool = False) -> Iterator[Session]:
    """Prepare and boot in one step (for tests and quick experiments)."""
    timings = Timings()
    prepared = prepare(ko=ko, timings=timings)
    with boot(prepared, memory_mib=memory_mib, cpus=cpus, extra_append=extra_append,
              timings=timings, fresh_boot=fresh_boot) as session:
        yield session

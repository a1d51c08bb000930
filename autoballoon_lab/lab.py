"""``Lab``: image, optional memory cgroup, N guests and hogs, with guaranteed cleanup."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

from .cgroup import MemoryCgroup, sweep_stale
from .errors import LabError
from .guest import GuestConfig, LabGuest
from .hog import Hog
from .image import GuestImage, ensure_image

MIB = 1 << 20


class Lab:
    """A set of lab guests (``lab-1`` .. ``lab-N``), optionally in one memory cgroup.

    ``guests`` is a count (each booted with ``config``) or one ``GuestConfig``
    per guest. With ``cgroup_limit_mib`` every QEMU and hog is placed in a
    fresh memory cgroup with that limit. On exit -- normal, exception or
    KeyboardInterrupt, and at interpreter exit as a fallback -- every process
    the lab started is stopped by its PID and the cgroup is removed.
    """

    def __init__(
        self,
        guests: int | Sequence[GuestConfig] = 1,
        *,
        config: GuestConfig | None = None,
        cgroup_limit_mib: int | None = None,
        run_dir: Path | None = None,
        image: GuestImage | None = None,
        name_prefix: str = "lab",
        keep_run_dir: bool = False,
    ) -> None:
        if isinstance(guests, int):
            self.configs = [config or GuestConfig()] * guests
        else:
            self.configs = list(guests)
        self.cgroup_limit_mib = cgroup_limit_mib
        self.name_prefix = name_prefix
        self.keep_run_dir = keep_run_dir
        self._given_run_dir = run_dir
        self._image = image
        self.run_dir: Path | None = None
        self.cgroup: MemoryCgroup | None = None
        self.guests: list[LabGuest] = []
        self.hogs: list[Hog] = []
        self._started = False

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> Lab:
        """Build/fetch the image, make the cgroup and start every guest."""
        if self._started:
            raise LabError("lab already started")
        self._started = True
        atexit.register(self.close)
        try:
            image = self._image or ensure_image()
            if self._given_run_dir is not None:
                self._given_run_dir.mkdir(parents=True, exist_ok=True)
                self.run_dir = self._given_run_dir
            else:
                self.run_dir = Path(tempfile.mkdtemp(prefix="autoballoon-lab-"))
            if self.cgroup_limit_mib is not None:
                sweep_stale()
                self.cgroup = MemoryCgroup(self.cgroup_limit_mib * MIB)
            for index, cfg in enumerate(self.configs, start=1):
                guest = LabGuest(
                    f"{self.name_prefix}-{index}", image, self.run_dir, cfg, self.cgroup
                )
                self.guests.append(guest)
                guest.start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Stop hogs and guests (by PID), remove the cgroup and the run dir.

        Idempotent. Every step is attempted; the first failure is re-raised.
        """
        errors: list[BaseException] = []
        for hog in self.hogs:
            self._attempt(errors, hog.stop)
        for guest in self.guests:
            self._attempt(errors, guest.stop)
        if self.cgroup is not None:
            self._attempt(errors, self.cgroup.remove)
        if self.run_dir is not None and self._given_run_dir is None and not self.keep_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if not errors:
            atexit.unregister(self.close)
        if errors:
            raise errors[0]

    @staticmethod
    def _attempt(errors: list[BaseException], step: Callable[[], object]) -> None:
        try:
            step()
        except BaseException as error:  # keep cleaning up, even on Ctrl-C
            errors.append(error)

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- use ----------------------------------------------------------------------

    def guest(self, name: str) -> LabGuest:
        """The guest called ``name``."""
        for guest in self.guests:
            if guest.name == name:
                return guest
        raise KeyError(name)

    def wait_ready(self, timeout: float = 90.0) -> dict[str, float]:
        """Wait for every guest's ready marker; return seconds-to-ready by name."""
        deadline = time.monotonic() + timeout
        return {
            guest.name: guest.wait_ready(max(deadline - time.monotonic(), 0.1))
            for guest in self.guests
        }

    def start_hog(
        self,
        size_mib: int,
        *,
        rate_mib_s: float | None = None,
        retouch_interval: float = 0.5,
    ) -> Hog:
        """Start a memory hog in the lab's cgroup (which must have a limit)."""
        if self.cgroup is None:
            raise LabError("hogs need a lab with cgroup_limit_mib (no host-wide pressure)")
        hog = Hog(self.cgroup, size_mib, rate_mib_s=rate_mib_s, retouch_interval=retouch_interval)
        self.hogs.append(hog)
        return hog

    def started_pids(self) -> list[int]:
        """PIDs of every process this lab started (running or not)."""
        pids = [hog.pid for hog in self.hogs]
        for guest in self.guests:
            try:
                pids.append(guest.pid)
            except LabError:
                continue
        return pids

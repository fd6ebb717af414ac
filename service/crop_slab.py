"""Shared memory between a front-end process and the inference process: one slab of fixed-size
crop slots per model and front-end, and the allocator of contiguous slot runs.

The inference process creates a slab for each front-end that connects, the front-end attaches it,
and the name is then unlinked at once: the mapping lives on in both processes, and no segment
stays in /dev/shm whichever of them is killed afterwards. A request's crops take one contiguous
run of slots, so that the inference process sees them as one array view (no copy) and hands it to
its batcher as it would a request's own crops.
"""

import contextlib
import logging
import os
from multiprocessing import resource_tracker, shared_memory

import numpy as np

log = logging.getLogger("dipr.service")
SHM_FOLDER = "/dev/shm"


class CropSlab:
    """`slots` crops of `shape` (H, W, 3) uint8 in one shared-memory segment."""

    def __init__(
        self, memory: shared_memory.SharedMemory, slots: int, shape: tuple[int, ...]
    ) -> None:
        self._memory: shared_memory.SharedMemory | None = memory
        self.name = memory.name
        self.slots = slots
        self.shape = shape
        self.crops: np.ndarray | None = np.ndarray((slots, *shape), np.uint8, memory.buf)

    @staticmethod
    def size(slots: int, shape: tuple[int, ...]) -> int:
        return slots * int(np.prod(shape))

    @classmethod
    def create(cls, slots: int, shape: tuple[int, ...]) -> "CropSlab":
        memory = shared_memory.SharedMemory(create=True, size=cls.size(slots, shape))
        return cls(memory, slots, shape)

    @classmethod
    def attach(cls, name: str, slots: int, shape: tuple[int, ...]) -> "CropSlab":
        memory = shared_memory.SharedMemory(name=name)
        # Python < 3.13 registers an attached segment with this process's resource tracker as if
        # it had created it, and would unlink it (with a "leaked" warning) at exit: the creator
        # owns its name.
        resource_tracker.unregister(memory._name, "shared_memory")  # type: ignore[attr-defined]
        if memory.size < cls.size(slots, shape):
            memory.close()
            raise ValueError(f"shared memory {name} is smaller than {slots} slots of {shape}")
        return cls(memory, slots, shape)

    def unlink(self) -> None:
        """Remove the name (both sides are attached): the memory goes when both unmap it."""
        if self._memory is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self._memory.unlink()

    def release(self) -> bool:
        """Unmap, unless views of it are still alive (a batch being stacked from it); True when
        done. Call again later otherwise: the memory stays valid until then."""
        if self._memory is None:
            return True
        self.crops = None
        try:
            self._memory.close()
        except BufferError:
            return False
        self._memory = None
        return True


def shared_memory_free() -> int | None:
    """Bytes free for shared memory (the /dev/shm filesystem), or None where there is none. A
    segment larger than that is created (sparse) but its first write past the space kills the
    process with SIGBUS: check before creating."""
    try:
        stats = os.statvfs(SHM_FOLDER)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


class SlotRuns:
    """Which slots of a slab are taken: contiguous runs, first fit. Used from one thread only
    (the front-end's event loop)."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        self._taken = np.zeros(slots, bool)

    @property
    def free(self) -> int:
        return int(self.slots - self._taken.sum())

    def take(self, count: int) -> int | None:
        """The first slot of a free run of `count`, now taken; None if there is no such run."""
        if count < 1 or count > self.slots:
            return None
        free = ~self._taken
        # Runs of free slots: a window of `count` is free when its count of free slots is `count`.
        totals = np.concatenate([[0], np.cumsum(free, dtype=np.int64)])
        fits = np.flatnonzero(totals[count:] - totals[:-count] == count)
        if len(fits) == 0:
            return None
        first = int(fits[0])
        self._taken[first : first + count] = True
        return first

    def give_back(self, first: int, count: int) -> None:
        self._taken[first : first + count] = False

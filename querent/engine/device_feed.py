"""Bags for the model's device, read ahead by threads: on CUDA pinned and copied while it computes.

Streamed bags' features are read by threads of this process straight from their files
(:mod:`querent.data.direct_reads`: one copy, not passed through the loader workers, which then
read only coordinates and build grids). On CUDA they are read into pinned host memory (held
bags' features are copied there by the same threads), and each bag goes to the device on a
side stream while the model computes the one before; float16 files are copied as stored, half
the bytes, and cast on the device. Features reach the model as float32. Held bags on the CPU
pass through untouched.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader

from querent.data.bags import Bag
from querent.data.direct_reads import FeatureLayout, feature_layout, read_features_into

#: Bags read ahead of the one the model computes, each by its own thread.
READ_AHEAD = 3


@dataclass(frozen=True)
class _Host:
    """A bag's features and cells on the host (pinned for CUDA; float32 for the CPU)."""

    bag: Bag
    features: torch.Tensor
    cells: torch.Tensor


@dataclass(frozen=True)
class _Sent:
    """A bag's features and cells on their way to the device, done when ``event`` is (CUDA)."""

    bag: Bag
    tensors: tuple[torch.Tensor, torch.Tensor]
    event: torch.cuda.Event | None


class DeviceFeed:
    """The bags of ``loader`` with features and cells on ``device``.

    Args:
        loader: A :func:`~querent.data.bags.bag_loader` of a
            :class:`~querent.data.bags.BagDataset`; where that reads no features
            (``read_features``), the feed reads them from the dataset's files.
        device: Where the model runs.
        read_ahead: Bags read ahead, and threads reading them.
    """

    def __init__(
        self, loader: DataLoader, device: torch.device, read_ahead: int = READ_AHEAD
    ) -> None:
        self.loader, self.device, self.read_ahead = loader, device, read_ahead
        self.files = loader.dataset.files
        self._layouts: dict[object, FeatureLayout] = {}

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Bag]:
        if self.loader.dataset.read_features and self.device.type != "cuda":
            return iter(self.loader)
        return self._ahead()

    def _ahead(self) -> Iterator[Bag]:
        """Bag ``i + 1`` is sent before bag ``i`` is handed over, if it is read by then."""
        side = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        bags = iter(self.loader)
        with ThreadPoolExecutor(self.read_ahead, thread_name_prefix="bag-reader") as pool:
            reads: deque[Future[_Host]] = deque()

            def read_next() -> None:
                bag = next(bags, None)
                if bag is not None:
                    reads.append(pool.submit(self._host, bag))

            def send_next() -> _Sent:
                sent = self._send(reads.popleft().result(), side)
                read_next()
                return sent

            for _ in range(self.read_ahead):
                read_next()
            sent = send_next() if reads else None
            while sent is not None:
                following = send_next() if reads and reads[0].done() else None
                yield self._receive(sent)
                sent = following or (send_next() if reads else None)

    def host_features(self, bag: Bag) -> torch.Tensor:
        """The bag's features on the host as stored (float16 or float32), pinned for CUDA.

        Read from its files where the loader read none (the kept ``rows`` of each slide's
        file, in the bag's order), else the loader's, copied into pinned memory for CUDA.
        """
        pin = self.device.type == "cuda"
        if bag.features is not None:
            return (
                bag.features.pin_memory() if pin and not bag.features.is_pinned() else bag.features
            )
        paths = self.files[bag.slide_id]
        layouts = [self._layout(path) for path in paths]
        dtypes = {layout.read_dtype for layout in layouts}
        dtype = _torch_dtype(dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32))
        sizes = [layout.shape[0] for layout in layouts]
        width = layouts[0].shape[1]
        features = torch.empty((sum(sizes), width), dtype=dtype, pin_memory=pin)
        out, start = features.numpy(), 0
        for path, layout, n in zip(paths, layouts, sizes, strict=True):
            read_features_into(path, layout, out[start : start + n])
            start += n
        if len(bag.rows) == len(features):  # the whole bag, in file order
            return features
        starts = torch.tensor(np.cumsum([0, *sizes[:-1]]), dtype=torch.int64)
        kept = torch.empty((len(bag.rows), width), dtype=dtype, pin_memory=pin)
        return torch.index_select(features, 0, starts[bag.slide_of_patch] + bag.rows, out=kept)

    def _host(self, bag: Bag) -> _Host:
        """The bag's features and cells, pinned for CUDA (in a reader thread)."""
        if self.device.type == "cuda":
            return _Host(bag, self.host_features(bag), bag.cells.pin_memory())
        return _Host(bag, self.host_features(bag).float(), bag.cells)

    def _layout(self, path) -> FeatureLayout:
        if path not in self._layouts:
            self._layouts[path] = feature_layout(path)
        return self._layouts[path]

    def _send(self, host: _Host, side: torch.cuda.Stream | None) -> _Sent:
        """Start the bag's copies on the ``side`` stream (CUDA)."""
        if side is None:
            return _Sent(host.bag, (host.features, host.cells), None)
        with torch.cuda.stream(side):
            features = host.features.to(self.device, non_blocking=True)
            cells = host.cells.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(side)
        return _Sent(host.bag, (features, cells), event)

    def _receive(self, sent: _Sent) -> Bag:
        """The bag on the device, for work on the current stream (which waits for the copies).

        ``record_stream`` keeps the side stream's allocations from reuse until the current
        stream's work on them is done.
        """
        if sent.event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(sent.event)
            for tensor in sent.tensors:
                tensor.record_stream(current)
        features, cells = sent.tensors
        return replace(sent.bag, features=features.float(), cells=cells)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype)).dtype

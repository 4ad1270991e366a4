"""Docker pull events -> one overall percentage, weighted by layer bytes and never going backwards. Pure.

premd averaged a per-layer constant over the layers seen so far, so a new layer made the bar jump back.
Here each layer counts with its size (download ``total``; a layer whose size is not known yet counts as
the mean of the known ones), its download is 80 % of its work and its extraction the rest, and the
reported value is the maximum reached so far.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import msgspec

from common.messages import LayerProgress
from scheduler.docker_driver import PullEvent

DOWNLOAD_SHARE = 0.8
"""Part of a layer's work that is the download (the rest is extraction)."""
RATE_WINDOW_S = 2.0

_LAYER_STATUSES = frozenset(
    {
        "Pulling fs layer",
        "Waiting",
        "Downloading",
        "Verifying Checksum",
        "Download complete",
        "Extracting",
        "Pull complete",
        "Already exists",
    }
)


class PullSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    percentage: float
    bytes_done: int
    bytes_total: int
    rate_bps: float
    layers: list[LayerProgress]
    status: str


@dataclass
class _Layer:
    id: str
    status: str = "Pulling fs layer"
    total: int = 0
    downloaded: int = 0
    fraction: float = 0.0
    skipped: bool = False


class PullProgress:
    """Feed it Docker's pull events; read a snapshot whenever an event should be published."""

    def __init__(self) -> None:
        self._layers: dict[str, _Layer] = {}
        self._percentage = 0.0
        self._samples: deque[tuple[float, int]] = deque()
        self.transition = False
        """The last event changed a layer's status (not just its bytes): worth publishing at once."""

    def feed(self, event: PullEvent, now: float) -> bool:
        """Account one event; True when it moved a layer (worth publishing)."""
        self.transition = False
        if event.status not in _LAYER_STATUSES or not event.id:
            return False  # "Pulling from", "Digest", "Status", "Retrying in ..." carry no layer bytes
        layer = self._layers.setdefault(event.id, _Layer(event.id, status=""))
        self.transition = layer.status != event.status
        layer.status = event.status
        if event.status == "Already exists":
            layer.skipped, layer.fraction = True, 1.0
        elif event.status == "Downloading" and event.total > 0:
            layer.total = max(layer.total, event.total)
            layer.downloaded = min(event.current, layer.total)
            layer.fraction = max(layer.fraction, DOWNLOAD_SHARE * layer.downloaded / layer.total)
        elif event.status in ("Verifying Checksum", "Download complete"):
            layer.downloaded = layer.total
            layer.fraction = max(layer.fraction, DOWNLOAD_SHARE)
        elif event.status == "Extracting":
            layer.downloaded = layer.total
            done = event.current / event.total if event.total > 0 else 0.0
            layer.fraction = max(layer.fraction, DOWNLOAD_SHARE + (1 - DOWNLOAD_SHARE) * min(done, 1.0))
        elif event.status == "Pull complete":
            layer.downloaded = layer.total
            layer.fraction = 1.0
        self._percentage = max(self._percentage, self._overall() * 100)
        self._samples.append((now, self.bytes_done))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_S:
            self._samples.popleft()
        return True

    def _overall(self) -> float:
        counted = [layer for layer in self._layers.values() if not layer.skipped]
        if not counted:
            return 0.0  # only layers already here so far: the new ones are announced next
        known = [layer.total for layer in counted if layer.total > 0]
        estimate = sum(known) / len(known) if known else 1.0
        weights = [layer.total if layer.total > 0 else estimate for layer in counted]
        return sum(w * layer.fraction for w, layer in zip(weights, counted, strict=True)) / sum(weights)

    @property
    def percentage(self) -> float:
        return round(min(self._percentage, 100.0), 2)

    @property
    def bytes_done(self) -> int:
        return sum(layer.downloaded for layer in self._layers.values())

    @property
    def bytes_total(self) -> int:
        return sum(layer.total for layer in self._layers.values())

    def rate_bps(self) -> float:
        if len(self._samples) < 2:
            return 0.0
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0

    def snapshot(self) -> PullSnapshot:
        return PullSnapshot(
            percentage=self.percentage,
            bytes_done=self.bytes_done,
            bytes_total=self.bytes_total,
            rate_bps=round(self.rate_bps(), 1),
            layers=[
                LayerProgress(id=layer.id, status=layer.status, current=layer.downloaded, total=layer.total)
                for layer in self._layers.values()
            ],
            status=self.phase(),
        )

    def phase(self) -> str:
        """Overall status text. Never "Download complete": Prem App reads that as the end of the whole pull."""
        counted = [layer for layer in self._layers.values() if not layer.skipped]
        if any(layer.fraction < DOWNLOAD_SHARE for layer in counted) or not counted:
            return "Downloading"
        return "Extracting"

"""Pull progress: bytes-weighted, monotonic, never "Download complete" before the end."""

from __future__ import annotations

from scheduler.docker_driver import PullEvent
from scheduler.pull_progress import PullProgress

MB = 1_000_000


def _feed(progress: PullProgress, events: list[PullEvent]) -> list[float]:
    out = []
    for i, event in enumerate(events):
        progress.feed(event, now=float(i))
        out.append(progress.percentage)
    return out


def test_weighted_by_bytes_not_by_layer_count() -> None:
    progress = PullProgress()
    _feed(
        progress,
        [
            PullEvent("Pulling fs layer", "big"),
            PullEvent("Pulling fs layer", "small"),
            PullEvent("Downloading", "big", current=0, total=90 * MB),
            PullEvent("Downloading", "small", current=10 * MB, total=10 * MB),
        ],
    )
    # the small layer downloaded entirely is 10 % of the bytes, worth 80 % of its work: 8 %
    assert progress.percentage == 8.0
    assert progress.bytes_done == 10 * MB and progress.bytes_total == 100 * MB


def test_monotonic_when_a_new_layer_appears() -> None:
    progress = PullProgress()
    values = _feed(
        progress,
        [
            PullEvent("Downloading", "a", current=5 * MB, total=10 * MB),
            PullEvent("Download complete", "a"),
            PullEvent("Pull complete", "a"),
            # premd's mean would drop from 100 to 50 here
            PullEvent("Pulling fs layer", "b"),
            PullEvent("Downloading", "b", current=1 * MB, total=100 * MB),
            PullEvent("Downloading", "b", current=50 * MB, total=100 * MB),
            PullEvent("Download complete", "b"),
            PullEvent("Extracting", "b", current=50 * MB, total=100 * MB),
            PullEvent("Pull complete", "b"),
        ],
    )
    assert values == sorted(values)
    assert values[-1] == 100.0
    assert values[2] == 100.0  # the only known layer was complete: the maximum is kept


def test_only_existing_layers_is_not_done_yet() -> None:
    progress = PullProgress()
    _feed(progress, [PullEvent("Already exists", "base"), PullEvent("Pulling from x", "1")])
    assert progress.percentage == 0.0


def test_unknown_statuses_are_ignored_and_status_never_says_download_complete() -> None:
    progress = PullProgress()
    events = [
        PullEvent("Pulling from premd-test/x", "1"),
        PullEvent("Pulling fs layer", "a"),
        PullEvent("Retrying in 5 seconds", "a"),
        PullEvent("Downloading", "a", current=1, total=2),
        PullEvent("Download complete", "a"),
        PullEvent("Digest: sha256:abc"),
    ]
    for i, event in enumerate(events):
        progress.feed(event, now=float(i))
        assert progress.snapshot().status != "Download complete"
    assert progress.snapshot().status == "Extracting"
    assert [layer.id for layer in progress.snapshot().layers] == ["a"]


def test_rate_over_a_window() -> None:
    progress = PullProgress()
    progress.feed(PullEvent("Downloading", "a", current=0, total=10 * MB), now=0.0)
    progress.feed(PullEvent("Downloading", "a", current=2 * MB, total=10 * MB), now=1.0)
    assert progress.rate_bps() == 2 * MB


def test_transition_flags_new_layer_statuses_only() -> None:
    progress = PullProgress()

    def feed(event: PullEvent) -> bool:
        progress.feed(event, now=0)
        return progress.transition

    assert feed(PullEvent("Downloading", "a", current=1, total=10))
    assert not feed(PullEvent("Downloading", "a", current=2, total=10))
    assert feed(PullEvent("Download complete", "a"))

"""Reconcile decisions: desired state vs containers -> adopt, start, remove orphans and duplicates; backoff."""

from __future__ import annotations

import msgspec

from common.messages import DesiredState
from scheduler.docker_driver import ContainerInfo
from scheduler.reconcile_rules import CRASHLOOP_AFTER, Action, Adopt, Backoff, Idle, Remove, Start, after_crash, owner
from scheduler.reconcile_rules import decide as decide_for

ME = "instance-me"


def decide(
    known: set[str], desired: dict[str, DesiredState], containers: list[ContainerInfo], busy: set[str]
) -> list[Action]:
    return decide_for({sid: frozenset({"img"}) for sid in known}, desired, containers, busy, ME)


def _c(
    cid: str, service: str | None, *, name: str | None = None, state: str = "running", gen: int = 1, owner: str = ME
) -> ContainerInfo:
    return ContainerInfo(
        instance=owner if service is not None else None,
        id=cid,
        name=name or service or cid,
        image="img:1",
        state=state,
        managed=service is not None,
        service_id=service,
        generation=gen,
        created=float(gen),
    )


def _want(sid: str, running: bool = True) -> DesiredState:
    return DesiredState(service_id=sid, running=running, generation=1, operation_id="op")


def test_desired_running_without_container_starts() -> None:
    assert decide({"a"}, {"a": _want("a")}, [], set()) == [Start("a")]


def test_desired_running_with_running_container_is_adopted() -> None:
    c = _c("1", "a")
    assert decide({"a"}, {"a": _want("a")}, [c], set()) == [Adopt("a", c)]


def test_exited_container_of_desired_service_is_a_crash_to_restart() -> None:
    c = _c("1", "a", state="exited")
    (action,) = decide({"a"}, {"a": _want("a")}, [c], set())
    assert isinstance(action, Start) and action.crashed and action.previous == c


def test_created_but_never_started_is_not_a_crash() -> None:
    c = _c("1", "a", state="created")  # the scheduler was killed between create and start
    (action,) = decide({"a"}, {"a": _want("a")}, [c], set())
    assert isinstance(action, Start) and not action.crashed


def test_duplicates_are_removed_keeping_the_one_named_after_the_service() -> None:
    named = _c("1", "a", gen=1)
    extra = _c("2", "a", name="a-copy", gen=2)
    actions = decide({"a"}, {"a": _want("a")}, [extra, named], set())
    assert actions == [Remove("a", extra, "duplicate"), Adopt("a", named)]


def test_orphans_of_undesired_services_are_removed_but_dead_ones_kept_for_logs() -> None:
    live = _c("1", "a")
    dead = _c("2", "b", state="exited")
    actions = decide({"a", "b"}, {"a": _want("a", running=False)}, [live, dead], set())
    assert actions == [Remove("a", live, "orphan"), Idle("a"), Idle("b", dead)]


def test_labelled_container_of_unknown_service_without_desired_state_is_an_orphan() -> None:
    c = _c("1", "ghost")
    assert decide(set(), {}, [c], set()) == [Remove("ghost", c, "orphan"), Idle("ghost")]


def test_unlabelled_container_named_after_a_known_service_is_adopted() -> None:
    c = _c("1", None, name="a")
    assert decide({"a"}, {}, [c], set()) == [Adopt("a", c, record_desired=True)]


def test_unlabelled_container_of_another_image_is_not_the_services() -> None:
    """A user's ``docker run --name a postgres``: neither adopted nor removed, even when "a" should run."""
    c = msgspec.structs.replace(_c("1", None, name="a"), image="docker.io/library/postgres:16")
    assert decide({"a"}, {}, [c], set()) == [Idle("a")]
    assert decide({"a"}, {"a": _want("a")}, [c], set()) == [Start("a")]


def test_unlabelled_containers_are_never_removed_and_foreign_ones_ignored() -> None:
    named = _c("1", None, name="a")
    foreign = _c("2", None, name="postgres-of-the-user")
    assert decide({"a"}, {"a": _want("a", running=False)}, [named, foreign], set()) == [Idle("a")]


def test_another_premds_containers_are_never_touched() -> None:
    theirs = _c("1", "a", owner="instance-other")
    assert decide({"a"}, {}, [theirs], set()) == [Idle("a")]
    assert decide({"a"}, {"a": _want("a")}, [theirs], set()) == [Start("a")]


def test_premd_labelled_containers_without_this_instance_label_are_never_reaped() -> None:
    """Several premds (and test runs) share one engine: only this instance's label makes a container this
    premd's. One with premd's labels and no instance label, or another's, is neither reaped nor adopted."""
    unmarked = msgspec.structs.replace(_c("1", "a"), instance=None)
    theirs = _c("2", "a", owner="instance-other")
    mine = _c("3", "a")
    known = {"a": frozenset({"img"})}
    for stranger in (unmarked, theirs):
        assert owner(stranger, known, ME) is None
        assert decide({"a"}, {}, [stranger], set()) == [Idle("a")]  # not an orphan of this premd
        assert decide({"a"}, {"a": _want("a")}, [stranger], set()) == [Start("a")]  # not a duplicate either
    assert decide({"a"}, {}, [mine, unmarked, theirs], set()) == [Remove("a", mine, "orphan"), Idle("a")]
    without_service = msgspec.structs.replace(_c("4", "a"), service_id=None)
    assert owner(without_service, known, ME) is None


def test_busy_services_are_left_to_their_operation() -> None:
    assert decide({"a"}, {"a": _want("a")}, [], {"a"}) == []


def test_backoff_doubles_per_crash_and_is_capped() -> None:
    record: Backoff | None = None
    delays = []
    for i in range(8):
        record = after_crash(record, f"c{i}", now=100.0 * i, base_s=1.0, cap_s=30.0)
        delays.append(record.next_start_at - record.last_crash_at)
    assert delays == [1, 2, 4, 8, 16, 30, 30, 30]
    assert record is not None and record.crashes == 8 and record.crashloop


def test_backoff_counts_one_crash_once_and_resets_after_a_quiet_window() -> None:
    first = after_crash(None, "c1", now=0.0, base_s=1.0, cap_s=60.0)
    assert after_crash(first, "c1", now=5.0, base_s=1.0, cap_s=60.0) is first
    again = after_crash(first, "c2", now=10_000.0, base_s=1.0, cap_s=60.0)
    assert again.crashes == 1 and not again.crashloop
    assert CRASHLOOP_AFTER > 1


def test_a_container_made_at_this_home_before_a_wipe_is_this_premds() -> None:
    """Another instance id at the same home: this premd before its data dir was wiped (defect 10)."""
    wiped = msgspec.structs.replace(_c("1", "a", owner="instance-old"), home="/data/premd")
    known = {"a": frozenset({"img"})}
    assert owner(wiped, known, ME, "/data/premd") == "a"
    assert owner(wiped, known, ME, "/other/premd") is None
    assert owner(wiped, known, ME) is None
    unmarked = msgspec.structs.replace(wiped, instance=None)  # a home alone does not make a container premd's
    assert owner(unmarked, known, ME, "/data/premd") is None

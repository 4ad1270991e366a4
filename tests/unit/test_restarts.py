"""The restart budget premd serve applies to its component processes and to the embedded nats-server."""

from __future__ import annotations

from common.restarts import FIRST_DELAY_S, RestartBudget


def test_the_pause_doubles_with_each_recent_death_until_the_budget_is_spent() -> None:
    budget = RestartBudget(max_restarts=3, window_s=60)
    assert [budget.died(now=t) for t in (0.0, 1.0, 2.0)] == [FIRST_DELAY_S, 2 * FIRST_DELAY_S, 4 * FIRST_DELAY_S]
    assert budget.died(now=3.0) is None
    assert budget.recent == 4


def test_deaths_older_than_the_window_are_forgotten() -> None:
    budget = RestartBudget(max_restarts=2, window_s=10)
    budget.died(now=0.0)
    budget.died(now=1.0)
    assert budget.died(now=20.0) == FIRST_DELAY_S  # the two early deaths left the window
    assert budget.recent == 1

"""One token source per credential (and ID-token audience), and the budget for new audiences."""

from __future__ import annotations

import pytest

from addons.policy_model import ADC, Credential
from addons.token_cache import TokenError
from addons.token_sources import AudienceBudget, TokenSources

ID_TOKEN = Credential("id_token")
IMPERSONATE = Credential("impersonate", chain=("t@p.iam.gserviceaccount.com",))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sources(burst: int = 3, rate: float = 1.0) -> tuple[TokenSources, Clock]:
    clock = Clock()
    made = TokenSources(budget=AudienceBudget(burst, rate, clock))
    made.configure(["https://www.googleapis.com/auth/cloud-platform"], [], None)
    return made, clock


def test_one_source_per_credential_and_audience():
    made, _ = sources()
    assert made.source_for(ADC, "storage.googleapis.com") is made.adc
    one = made.source_for(ID_TOKEN, "one-abc.a.run.app", "/x")
    assert made.source_for(ID_TOKEN, "ONE-abc.a.run.app.", "/y") is one  # same audience: https://one-abc.a.run.app
    assert made.source_for(ID_TOKEN, "two-abc.a.run.app") is not one
    hello = made.source_for(ID_TOKEN, "r-p.cloudfunctions.net", "/hello")
    assert made.source_for(ID_TOKEN, "r-p.cloudfunctions.net", "/hello/sub") is hello
    assert made.source_for(IMPERSONATE, "storage.googleapis.com") is made.source_for(IMPERSONATE, "x.googleapis.com")
    assert [name for name, _ in made.by_credential()] == [
        "adc", "ID token for audience https://HOST with ADC", "impersonate t@p.iam.gserviceaccount.com"]


def test_new_audiences_past_the_budget_are_refused_until_it_refills():
    made, clock = sources(burst=3, rate=1.0)
    for i in range(3):
        made.source_for(ID_TOKEN, f"s{i}-abc.a.run.app")
    known = made.source_for(ID_TOKEN, "s0-abc.a.run.app")  # a known audience costs nothing
    with pytest.raises(TokenError) as refused:
        made.source_for(ID_TOKEN, "s3-abc.a.run.app")
    assert refused.value.reason == "too_many_audiences"
    assert "https://s3-abc.a.run.app was not minted" in str(refused.value)
    assert made.source_for(ID_TOKEN, "s0-abc.a.run.app") is known
    assert made.source_for(IMPERSONATE, "storage.googleapis.com") is not None  # not an audience: no budget
    clock.now += 1.0
    made.source_for(ID_TOKEN, "s3-abc.a.run.app")  # one refilled
    with pytest.raises(TokenError):
        made.source_for(ID_TOKEN, "s4-abc.a.run.app")


def test_the_budget_refills_to_its_burst_and_no_further():
    clock = Clock()
    budget = AudienceBudget(2, 10.0, clock)
    assert [budget.take() for _ in range(3)] == [True, True, False]
    clock.now += 3600
    assert [budget.take() for _ in range(3)] == [True, True, False]

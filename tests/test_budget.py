"""TokenBudgets as pure plans, on a clock the test controls: admission, waiting, settlement, windows, the free
allowance, and what the operator's metrics say about them."""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import Any

import pytest

from hone_operator.metrics import FineTuneJobCollector, JobSample
from hone_operator.reconcile import budget
from hone_operator.reconcile.finetunejob import Observed, needs_budgets, plan
from hone_operator.settings import OperatorSettings
from hone_trainer import contract
from hone_dev.repo import load_sample

SETTINGS = OperatorSettings()
#: The finished validation Job of a validated FineTuneJob (its config and RBAC exist).
VALIDATED = {"metadata": {"name": "v"}, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
NOON = "2026-12-03T12:00:00Z"


def tb(name: str = "default", rv: str = "1", created: str = "2026-12-01T00:00:00Z", **training: Any) -> dict[str, Any]:
    return {"apiVersion": "hone.dev/v1alpha1", "kind": "TokenBudget",
            "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv, "generation": 1,
                         "creationTimestamp": created},
            "spec": {"training": training}}


def stored(b: dict[str, Any], write: budget.BudgetWrite | None) -> dict[str, Any]:
    """The budget after ``write``, as the API server would store it (a merge patch, a new resourceVersion)."""
    assert write is not None and write.resource_version == b["metadata"]["resourceVersion"]
    out = copy.deepcopy(b)
    out["status"] = _merge(out.get("status") or {}, write.patch)
    out["metadata"]["resourceVersion"] = str(int(b["metadata"]["resourceVersion"]) + 1)
    return out


def _merge(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(current)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def validated_job(name: str, uid: str, tokens: int) -> dict[str, Any]:
    """A FineTuneJob whose ValidatingFiles step counted ``tokens`` billable tokens (3 epochs)."""
    obj = load_sample("finetunejob-minimal.yaml")
    obj["metadata"].update(name=name, namespace="ns", uid=uid, generation=1)
    hp = contract.resolve_hyperparameters(120)
    obj["status"] = {
        "phase": "Queued", "observedGeneration": 1,
        "conditions": [{"type": "FilesValidated", "status": "True", "reason": "Validated", "observedGeneration": 1}],
        "dataset": {"examples": 120, "tokensPerEpoch": tokens // hp.epochs},
        "estimate": {"billableTrainingTokens": tokens, "costUsd": contract.cost_usd(tokens, 25.0),
                     "usdPerMillionTokens": 25.0, "hyperparameters": hp.model_dump(by_alias=True)}}
    return obj


def step(job: dict[str, Any], budgets: list[dict[str, Any]], at: str = NOON, **observed: Any) -> Any:
    """Plan ``job`` once (reading ``budgets`` where it would) and apply its status patch to ``job``."""
    obs = Observed(**{"validation_job": VALIDATED, **observed})
    if needs_budgets(job, obs):
        obs.budgets = budgets
    p = plan(job, obs, SETTINGS, at)
    job["status"] = {**(job.get("status") or {}), **(p.status or {})}
    return p


def cond(job: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in job["status"]["conditions"] if c["type"] == type_)


def ended(job: dict[str, Any], phase: str, trained: int) -> None:
    job["status"]["phase"] = phase
    if phase == "Succeeded":
        job["status"]["trainedTokens"] = trained
    job["status"]["progress"] = {"step": 1, "totalSteps": 1, "trainedTokens": trained}


def test_two_jobs_that_fit_alone_but_not_together_run_one_after_the_other() -> None:
    b = tb(tokensPerDay=1_000_000, freeTokensPerDay=0)
    first, second = validated_job("first", "u1", 600_000), validated_job("second", "u2", 600_000)
    p = step(first, [b])
    assert [o["kind"] for o in p.ensure] == ["ConfigMap", "NetworkPolicy", "Job"]  # reserved, so its training Job is created
    b = stored(b, p.budget_write)
    assert cond(first, "BudgetAdmitted")["reason"] == "Reserved"
    assert first["status"]["budget"]["tokens"] == 600_000

    # The second reads the budget as the first left it: 400,000 remain, it needs 600,000.
    p = step(second, [b])
    assert not p.ensure and p.budget_write is None and second["status"]["phase"] == "Queued"
    c = cond(second, "BudgetAdmitted")
    assert (c["status"], c["reason"]) == ("False", "InsufficientBudget")
    assert c["message"] == (
        "needs 600,000 training tokens ($15.00 after 0 free) and TokenBudget 'default' has not enough: 400,000 of "
        "its 1,000,000 tokens a day remain. It starts by itself when the 1 running job(s) holding 600,000 tokens "
        "end, or at 2026-12-04T00:00:00Z when the day resets")
    assert [e.reason for e in p.events] == ["InsufficientBudget"]  # once, as the condition turns
    assert p.requeue_after == 3600  # the day resets in 12 hours; looked at again each hour meanwhile
    assert step(second, [b]).events == []

    # The first succeeds; its charge frees nothing for today (600,000 used), so the second still waits...
    ended(first, "Succeeded", 600_000)
    p = step(first, [b])
    b = stored(b, p.budget_write)
    assert b["status"]["training"]["tokensToday"] == 600_000 and not b["status"].get("reservations")
    assert first["status"]["budget"]["settledTokens"] == 600_000
    p = step(second, [b])
    assert not p.ensure and second["status"]["phase"] == "Queued"
    # ...until the day resets at midnight, when it is admitted and runs.
    p = step(second, [b], at="2026-12-04T00:00:01Z")
    b = stored(b, p.budget_write)
    assert [o["kind"] for o in p.ensure] == ["ConfigMap", "NetworkPolicy", "Job"]
    assert cond(second, "BudgetAdmitted")["status"] == "True"
    assert b["status"]["training"]["day"] == "2026-12-04" and b["status"]["training"]["tokensToday"] == 0
    assert b["status"]["training"]["reservedTokens"] == 600_000


def test_a_job_that_ends_early_gives_back_its_reservation_and_the_next_one_runs_at_once() -> None:
    b = tb(tokensPerDay=1_000_000, freeTokensPerDay=0)
    first, second = validated_job("first", "u1", 600_000), validated_job("second", "u2", 600_000)
    b = stored(b, step(first, [b]).budget_write)
    assert step(second, [b]).ensure == []
    ended(first, "Cancelled", 150_000)  # cancelled a quarter of the way: billed for what it trained
    p = step(first, [b])
    b = stored(b, p.budget_write)
    assert first["status"]["budget"] | {"admittedAt": None, "settledAt": None} == {
        "name": "default", "tokens": 600_000, "freeTokens": 0, "costUsd": 15.0, "usdPerMillionTokens": 25.0,
        "admittedAt": None, "settledAt": None, "settledTokens": 150_000, "settledFreeTokens": 0,
        "settledCostUsd": 3.75}
    assert [e.reason for e in p.events] == ["Charged"]
    assert b["status"]["training"]["tokensToday"] == 150_000
    p = step(second, [b])
    assert [o["kind"] for o in p.ensure] == ["ConfigMap", "NetworkPolicy", "Job"]


def test_a_job_bigger_than_a_whole_limit_fails_at_once_naming_the_budget() -> None:
    for limits, words in (({"tokensPerDay": 500_000}, "allows 500,000 a day (spec.training.tokensPerDay)"),
                          ({"tokensPerMonth": 500_000}, "allows 500,000 a month (spec.training.tokensPerMonth)"),
                          ({"costPerMonthUsd": 1.0}, "allows $1.00 a month (spec.training.costPerMonthUsd)")):
        job = validated_job("big", "u9", 2_000_000)
        p = step(job, [tb("team-budget", **limits)])
        assert job["status"]["phase"] == "Failed" and p.budget_write is None and not p.ensure
        error = job["status"]["error"]
        assert error["code"] == "insufficient_quota" and error["param"] == "spec.hyperparameters.epochs"
        assert "TokenBudget 'team-budget'" in error["message"] and words in error["message"]
        assert "can never fit" in error["message"]


def test_the_free_allowance_comes_first_then_the_price() -> None:
    """With the defaults (1M free tokens a day, $25 per 1M): a 600k job is free; the next 600k job gets the
    remaining 400k free and pays for 200k; the day's free tokens are used up after that."""
    b = tb()
    jobs = [validated_job(f"j{i}", f"u{i}", 600_000) for i in range(3)]
    for j in jobs:
        b = stored(b, step(j, [b]).budget_write)
    assert [(j["status"]["estimate"]["freeTokens"], j["status"]["estimate"]["costUsd"]) for j in jobs] == [
        (600_000, 0.0), (400_000, 5.0), (0, 15.0)]
    assert b["status"]["training"]["freeTokensRemainingToday"] == 0
    collector = FineTuneJobCollector(contract.PriceTable())
    for j in jobs:
        ended(j, "Succeeded", 600_000)
        b = stored(b, step(j, [b]).budget_write)
        use = j["status"]["budget"]
        collector.observe(j["metadata"]["uid"], JobSample("ns", j["metadata"]["name"], "m", "Succeeded", 600_000,
                                                          free_tokens=use["freeTokens"],
                                                          price=use["usdPerMillionTokens"]))
    usage = b["status"]["training"]
    assert (usage["tokensToday"], usage["freeTokensToday"], usage["costThisMonthUsd"]) == (1_800_000, 1_000_000, 20.0)
    samples = {(s.name, s.labels.get("finetunejob")): s.value for m in collector.collect() for s in m.samples}
    assert [samples[("hone_cost_usd_total", f"j{i}")] for i in range(3)] == [0.0, 5.0, 15.0]
    assert [samples[("hone_training_free_tokens_total", f"j{i}")] for i in range(3)] == [600_000, 400_000, 0]
    # The next day the allowance is whole again.
    j = validated_job("next-day", "u4", 600_000)
    b = stored(b, step(j, [b], at="2026-12-04T09:00:00Z").budget_write)
    assert j["status"]["estimate"]["freeTokens"] == 600_000


def test_a_settlement_is_charged_once_whatever_is_interrupted() -> None:
    b = tb(tokensPerDay=1_000_000)
    job = validated_job("j", "u1", 300_000)
    b = stored(b, step(job, [b]).budget_write)
    ended(job, "Succeeded", 300_000)
    before = copy.deepcopy(job)
    p = step(job, [b])
    charged = stored(b, p.budget_write)
    # The job's status write was lost (the operator died between the two writes): planned again from the old
    # job and the charged budget, it writes the same numbers into the job and nothing into the budget.
    again = copy.deepcopy(before)
    p2 = step(again, [charged])
    assert p2.budget_write is None
    assert {k: v for k, v in again["status"]["budget"].items() if k != "settledAt"} == \
        {k: v for k, v in job["status"]["budget"].items() if k != "settledAt"}
    assert charged["status"]["training"]["tokensToday"] == 300_000
    # Settled: nothing more is read or written.
    assert not needs_budgets(job, Observed()) and step(job, [charged]).budget_write is None


def test_enforce_false_meters_and_admits_over_the_limit() -> None:
    b = tb(tokensPerDay=100_000)
    b["spec"]["enforce"] = False
    job = validated_job("j", "u1", 300_000)
    p = step(job, [b])
    b = stored(b, p.budget_write)
    assert [o["kind"] for o in p.ensure] == ["ConfigMap", "NetworkPolicy", "Job"]
    assert "admitted because spec.enforce is false" in cond(job, "BudgetAdmitted")["message"]
    status = budget.desired_status(b, [b], budget.parse_time(NOON), NOON)
    assert {c.type: c.status for c in status.conditions} == {"Active": "True", "NearLimit": "True",
                                                            "Exhausted": "True"}


def test_windows_follow_the_budgets_time_zone() -> None:
    lisbon = budget.windows(datetime(2026, 12, 3, 23, 30, tzinfo=timezone.utc), "Europe/Lisbon")
    assert (lisbon.day, lisbon.resets_at.isoformat()) == ("2026-12-03", "2026-12-04T00:00:00+00:00")
    tokyo = budget.windows(datetime(2026, 12, 3, 23, 30, tzinfo=timezone.utc), "Asia/Tokyo")
    assert (tokyo.day, tokyo.month, tokyo.resets_at.isoformat()) == ("2026-12-04", "2026-12", "2026-12-04T15:00:00+00:00")
    # The day the clocks go back in New York has 25 hours.
    ny = budget.windows(datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc), "America/New_York")
    assert ny.resets_at.isoformat() == "2026-11-02T05:00:00+00:00"
    b = tb()
    b["status"] = {"training": {"day": "2026-11-30", "month": "2026-11", "tokensToday": 5, "freeTokensToday": 5,
                                "tokensThisMonth": 9, "costThisMonthUsd": 1.0}}
    _, status = budget.ledger(b, datetime(2026, 12, 1, 0, 0, 1, tzinfo=timezone.utc))
    assert (status.training.tokensToday, status.training.tokensThisMonth, status.training.costThisMonthUsd) == (0, 0, 0.0)
    with pytest.raises(ValueError, match="not an IANA time zone"):
        budget.TokenBudgetSpec.model_validate({"timeZone": "Mars/Olympus"})


def test_the_oldest_budget_governs_and_the_others_say_so() -> None:
    old, new = tb("team", created="2026-11-01T00:00:00Z"), tb("extra", created="2026-12-01T00:00:00Z")
    assert budget.governing([new, old])["metadata"]["name"] == "team"
    status = budget.desired_status(new, [new, old], budget.parse_time(NOON), NOON)
    active = next(c for c in status.conditions if c.type == "Active")
    assert (active.status, active.reason) == ("False", "Duplicate") and "'team'" in active.message


def test_without_a_budget_the_default_one_is_created_first() -> None:
    job = validated_job("j", "u1", 300_000)
    p = step(job, [])
    assert [(o["kind"], o["metadata"]["name"]) for o in p.ensure] == [("TokenBudget", "default")]
    assert p.ensure[0]["spec"] == {"enforce": True, "timeZone": "UTC", "training": {"freeTokensPerDay": 1_000_000},
                                   "inference": {}}
    assert job["status"]["phase"] == "Queued" and cond(job, "BudgetAdmitted")["reason"] == "CreatingBudget"
    metered_only = plan(validated_job("k", "u2", 300), Observed(validation_job=VALIDATED, budgets=[]),
                        OperatorSettings(default_budget=None), NOON)
    assert [o["kind"] for o in metered_only.ensure] == ["ConfigMap", "NetworkPolicy", "Job"]


def test_the_operator_admits_what_fits_and_charges_exactly_across_restarts(
        kube: Any, apiserver: Any, tmp_path: Any) -> None:
    """The real operator against the emulated API server: four 300k-token jobs validated at once against 1M
    tokens a day; it is killed twice (SIGKILL) while they run and end. Exactly three are admitted together;
    the fourth starts when a cancelled one gives tokens back; the budget's usage is the sum of what each job
    was charged, and the cost metric the sum of their costs."""
    from hone_dev.cluster import OperatorProcess, finish_job, ftj, get_job, seed_namespace, wait_for, wait_phase
    from hone_dev.resources import API, NS, apply, evaluated, finish_training, good_validation, published

    seed_namespace(kube, NS)
    kube.create({"apiVersion": API, "kind": "TokenBudget", "metadata": {"name": "team", "namespace": NS},
                 "spec": {"training": {"tokensPerDay": 1_000_000, "freeTokensPerDay": 200_000}}})
    names = [f"job-{i}" for i in range(4)]
    op = OperatorProcess(apiserver, tmp_path / "op1.log").start()
    try:
        for name in names:
            apply(kube, name=name)
        wait_for(lambda: all(get_job(kube, NS, f"{n}-validate") for n in names), what="validation Jobs")
        for name in names:  # 100k tokens an epoch, 3 epochs: 300k each
            finish_job(kube, NS, f"{name}-validate", "validator", 0, good_validation(tokens=100_000))

        def admitted() -> list[str]:
            # The training Job is created before the job's status.budget is written: admitted means both.
            return sorted(n for n in names if get_job(kube, NS, f"{n}-train") and
                          (ftj(kube, NS, n).get("status") or {}).get("budget"))

        wait_for(lambda: len(admitted()) == 3 and any(
            c["type"] == "BudgetAdmitted" and c["reason"] == "InsufficientBudget"
            for c in ftj(kube, NS, (set(names) - set(admitted())).pop())["status"].get("conditions") or []),
            what="three admitted, the fourth held")
        running = admitted()
        (waiting,) = set(names) - set(running)
        budget = kube.get(API, "TokenBudget", NS, "team")
        assert budget["status"]["training"]["reservedTokens"] == 900_000
        assert sorted(r["job"] for r in budget["status"]["reservations"]) == running
        assert sum(ftj(kube, NS, n)["status"]["budget"]["freeTokens"] for n in running) == 200_000

        op.kill()
        # While it is down: one job succeeds; another reports 90k trained tokens and is cancelled.
        done, cancelled, last = running
        finish_job(kube, NS, f"{done}-train", "trainer", 0, published(300_000, name=done))
        kube.patch(API, "FineTuneJob", NS, cancelled, {"status": {"progress": contract.Progress(
            step=3, total_steps=10, trained_tokens=90_000).to_json_dict()}}, subresource="status")
        kube.patch(API, "FineTuneJob", NS, cancelled, {"spec": {"cancel": True}})

        op = OperatorProcess(apiserver, tmp_path / "op2.log").start()
        # 1M - 300k - 90k charged - 300k still reserved = 310k: the held job fits now.
        wait_for(lambda: get_job(kube, NS, f"{waiting}-train"), timeout=30, what="the held job admitted")
        wait_phase(kube, NS, cancelled, "Cancelled")
        wait_for(lambda: get_job(kube, NS, f"{done}-eval"), what="the evaluation of the job trained meanwhile")
        finish_job(kube, NS, f"{done}-eval", "evaluator", 0, evaluated())
        op.kill()
        op = OperatorProcess(apiserver, tmp_path / "op3.log").start()
        for name in (last, waiting):
            finish_training(kube, name, published(300_000, name=name))
        settled = wait_for(lambda: all((ftj(kube, NS, n)["status"].get("budget") or {}).get("settledAt")
                                       for n in names) and [ftj(kube, NS, n)["status"]["budget"] for n in names],
                           what="every job charged")
        budget = wait_for(lambda: (b := kube.get(API, "TokenBudget", NS, "team")) and
                          not b["status"].get("reservations") and b, what="no reservation left")
        usage = budget["status"]["training"]
        assert sorted(s["settledTokens"] for s in settled) == [90_000, 300_000, 300_000, 300_000]
        assert usage["tokensToday"] == sum(s["settledTokens"] for s in settled) == 990_000
        assert usage["freeTokensToday"] == sum(s["settledFreeTokens"] for s in settled)
        assert usage["costThisMonthUsd"] == pytest.approx(sum(s["settledCostUsd"] for s in settled), abs=1e-9)
        assert usage["costThisMonthUsd"] == pytest.approx((990_000 - usage["freeTokensToday"]) * 25 / 1e6)
        metrics = wait_for(lambda: (m := op.metrics()) and "hone_budget_training_used_tokens" in m and m)
        costs = [float(line.split()[-1]) for line in metrics.splitlines()
                 if line.startswith("hone_cost_usd_total{") and 'kind="training"' in line]
        assert sum(costs) == pytest.approx(usage["costThisMonthUsd"], abs=1e-9)
        assert f'hone_budget_training_used_tokens{{budget="team",namespace="{NS}",window="day"}} 990000.0' in metrics
    finally:
        op.stop()


def test_a_job_deleted_while_it_runs_is_charged_what_it_trained(kube: Any, operator: Any) -> None:
    from hone_dev.cluster import wait_for
    from hone_dev.resources import API, NS, apply, validate_ok

    apply(kube, name="short-lived")
    validate_ok(kube, "short-lived")  # admitted: its training Job exists
    assert kube.get(API, "TokenBudget", NS, "default")["status"]["training"]["reservedTokens"] == 150_000
    kube.patch(API, "FineTuneJob", NS, "short-lived", {"status": {"progress": contract.Progress(
        step=4, total_steps=30, trained_tokens=20_000).to_json_dict()}}, subresource="status")
    wait_for(lambda: 'finetunejob="short-lived"' in operator.metrics() and
             'hone_training_tokens_total{base_model="HuggingFaceTB/SmolLM2-135M-Instruct",finetunejob="short-lived",'
             f'namespace="{NS}"}} 20000.0' in operator.metrics(), what="the report seen")
    kube.delete(API, "FineTuneJob", NS, "short-lived")
    usage = wait_for(lambda: (b := kube.get(API, "TokenBudget", NS, "default")) and
                     not (b.get("status") or {}).get("reservations") and b["status"]["training"], what="charged")
    assert (usage["tokensToday"], usage["freeTokensToday"], usage["reservedTokens"]) == (20_000, 20_000, 0)


def test_prices_per_base_model_reach_the_estimate_the_budget_and_the_server() -> None:
    from hone_operator.api.v1alpha1 import ModelServing
    from hone_operator.builders import served

    cheap = contract.PriceTable(training=3.0, prompt=0.3, completion=1.2)
    settings = OperatorSettings(model_prices={"HuggingFaceTB/SmolLM2-135M-Instruct": cheap}, default_budget=None)
    job = validated_job("j", "u1", 300_000)
    del job["status"]["estimate"]  # validated here, at this base model's price
    job["status"]["conditions"] = []
    result = contract.ValidationResult(ok=True, examples=120, tokens_per_epoch=100_000,
                                       hyperparameters=contract.resolve_hyperparameters(120),
                                       billable_training_tokens=300_000)
    pod = {"metadata": {"name": "p"}, "status": {"containerStatuses": [{"name": "validator", "state": {
        "terminated": {"exitCode": 0, "message": contract.to_termination_message(result)}}}]}}
    p = plan(job, Observed(validation_job=VALIDATED, validation_pods=[pod], budgets=[tb(freeTokensPerDay=0)]),
             settings, NOON)
    assert (p.status["estimate"]["usdPerMillionTokens"], p.status["estimate"]["costUsd"]) == (3.0, 0.9)
    assert p.status["budget"]["usdPerMillionTokens"] == 3.0 and p.budget_write.patch["reservations"][0]["costUsd"] == 0.9
    msv = ModelServing.model_validate({"metadata": {"name": "s", "namespace": "ns"}, "spec": {
        "baseModel": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}, "adapters": [{"uri": "s3://b/a"}]}})
    assert served.resolve(msv, {}, settings).config.prices == cheap
    other = msv.model_copy(update={"spec": msv.spec.model_copy(update={"baseModel": type(msv.spec.baseModel)(
        uri="hf://Qwen/Qwen2.5-0.5B-Instruct")})})
    assert served.resolve(other, {}, settings).config.prices == contract.PriceTable()


# --------------------------------------------------------------------------
# Inference: grants to serving pods
# --------------------------------------------------------------------------


def serving_tb(**inference: Any) -> dict[str, Any]:
    b = tb()
    b["spec"]["inference"] = inference
    return b


def report(b: dict[str, Any], pod: str, served: int, want: int = 0, in_flight: int = 0, at: str = NOON,
           day: str | None = "2026-12-03") -> tuple[dict[str, Any], contract.QuotaAnswer]:
    sent = contract.QuotaReport(pod=pod, uid=f"uid-{pod}", day=day, served=served, in_flight=in_flight, want=want)
    status, answer = budget.inference_report(b, sent, budget.parse_time(at))
    if status is None:
        return b, answer
    return stored(b, budget.status_write(b, status)), answer


def test_serving_pods_are_granted_what_is_left_and_never_more_than_the_day() -> None:
    b = serving_tb(tokensPerDay=1000)
    b, a = report(b, "a", 0, want=300)
    assert (a.granted, a.day, a.tokens_per_day) == (310, "2026-12-03", 1000)  # 300 and 1% more to hold
    b, other = report(b, "b", 0, want=800)
    assert other.granted == 0 and other.remaining_today == 690  # only 690 left beside a's 310
    # a served 250 and is idle: its unused 60 go back, and b's request fits.
    b, a = report(b, "a", 250, want=0, in_flight=0)
    assert a.granted == 250
    b, other = report(b, "b", 0, want=700)
    assert other.granted == 710
    inference = b["status"]["inference"]
    assert (inference["tokensToday"], inference["grantedTokens"], inference["remainingTodayTokens"]) == (250, 710, 40)
    # A repeated or late report never lowers what was served; a busy pod keeps what it holds.
    b, again = report(b, "a", 200, want=0, in_flight=0)
    assert again.served == 250
    b, held = report(b, "b", 100, in_flight=610)
    assert held.granted == 710
    # The grants add up to no more than the day's limit, whatever the pods ask.
    b, greedy = report(b, "c", 0, want=10_000)
    assert greedy.granted == 0
    assert sum(g["grantedTokens"] for g in b["status"]["inference"]["servers"]) <= 1000


def test_a_gone_pod_keeps_its_usage_and_returns_its_grant_and_days_start_again() -> None:
    b = serving_tb(tokensPerDay=1000, tokensPerMinute=600)
    b, a = report(b, "a", 0, want=100)
    b, c = report(b, "c", 0, want=100)
    assert a.minute_share == 600 and c.minute_share == 300  # shared among the pods that reported this minute
    b, a = report(b, "a", 90, in_flight=20)
    b = stored(b, budget.status_write(b, budget.retire_servers(b, {"uid-a"}, budget.parse_time(NOON))))
    inference = b["status"]["inference"]
    assert (inference["tokensToday"], inference["retiredTokensToday"], inference["grantedTokens"]) == (90, 90, 110)
    assert [g["pod"] for g in inference["servers"]] == ["c"]
    _, refused = report(b, "a", 95)
    assert refused.retired  # a report from a retired pod changes nothing
    assert budget.retire_servers(b, {"uid-a"}, budget.parse_time(NOON)) is None
    # At midnight the day's usage starts again; a pod's count for the day before says nothing of today's.
    b, late = report(b, "c", 40, want=50, at="2026-12-04T00:00:05Z", day="2026-12-03")
    assert (late.day, late.served, late.granted) == ("2026-12-04", 0, 60)
    assert b["status"]["inference"]["tokensToday"] == 0 and not b["status"]["inference"].get("retiredPods")


def test_without_inference_limits_or_enforcement_pods_are_only_metered() -> None:
    b, a = report(serving_tb(), "a", 500, want=100)
    assert a.granted is None and a.minute_share is None
    assert b["status"]["inference"]["tokensToday"] == 500
    relaxed = serving_tb(tokensPerDay=100)
    relaxed["spec"]["enforce"] = False
    relaxed, a = report(relaxed, "a", 500, want=100)
    assert a.granted is None and not a.enforce
    assert relaxed["status"]["inference"]["tokensToday"] == 500
    exhausted = next(c for c in budget.conditions(*budget.ledger(relaxed, budget.parse_time(NOON)), "default",
                                                    "default") if c.type == "Exhausted")
    assert exhausted.status == "True" and "inference tokens today" in exhausted.message

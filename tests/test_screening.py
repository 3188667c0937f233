"""Data screening in ValidatingFiles (#19 item 1): personal data and blocklisted terms, reported by line and kind
without their text, redacted in what trains (and counts), or refused naming the line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hone_trainer import contract
from hone_trainer.training import screening
from hone_trainer.training.validate import validate
from hone_dev.tiny import make_tokenizer
from tests.test_validate import chat, config_for, good_lines

CARD = "4111 1111 1111 1111"  # passes Luhn
IBAN = "GB82 WEST 1234 5698 7654 32"  # the ISO 13616 example, mod-97 == 1
EMAIL = "maria.silva@example.pt"
PHONE = "+351 912 345 678"
SECRETS = (CARD, IBAN, EMAIL, PHONE, "4111111111111111", "GB82WEST12345698765432")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


def kinds(text: str, **settings) -> list[str]:
    return [m.kind for m in screening.find(text, contract.DataScreening(**settings))]


def test_detectors_check_what_they_match() -> None:
    assert kinds(f"Card {CARD}, or 4111-1111-1111-1111.") == ["payment_card", "payment_card"]
    assert kinds("Card 4111 1111 1111 1112.") == []  # fails Luhn
    assert kinds(f"Pay to {IBAN} please") == ["iban"]
    assert kinds("Pay to GB83 WEST 1234 5698 7654 32 please") == []  # wrong check digits
    assert kinds(f"Write to {EMAIL} or call {PHONE} or (415) 555-2671.") == ["email", "phone", "phone"]
    # Ordinary numbers are not personal data: an order, a size, a year, a price.
    assert kinds("Order 123456 shipped in 2026 with 56mm wheels for 49.99 EUR.") == []
    assert kinds("Ask EMP-004211 or emp-9", patterns=[contract.ScreeningPattern(name="employee_id",
                                                                                   regex=r"EMP-\d{6}")]) == \
        ["employee_id"]
    assert kinds("Our Competitor Co. rocks; competitors don't", blocklist=["competitor co"]) == ["blocklist"]
    assert kinds(f"mail {EMAIL}", personal_data="off") == []


def _write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_report_lists_lines_and_kinds_never_the_text(tokenizer, tmp_path: Path) -> None:
    lines = good_lines(20) + [chat(f"My card is {CARD}, mail {EMAIL}", "Thanks, noted.")]
    result = validate(config_for(_write(tmp_path, lines)), tokenizer)
    assert result.ok
    s = result.screening
    assert s is not None and s.counts == {"payment_card": 1, "email": 1} and s.lines == 1 and s.redacted_messages == 0
    assert [(f.line, f.message, f.kind, f.action) for f in s.findings] == [
        (21, 1, "payment_card", "report"), (21, 1, "email", "report")]
    assert any("1 line(s) hold personal data" in w and "reported only" in w for w in result.warnings)
    plain = validate(config_for(_write(tmp_path, lines), screening=contract.DataScreening(personal_data="off")),
                     tokenizer)
    assert plain.screening is None and plain.tokens_per_epoch == result.tokens_per_epoch  # reporting changes nothing
    assert not any(secret in result.model_dump_json() for secret in SECRETS)
    # The job's status.dataset.screening, as the operator writes it from the result.
    from hone_operator.reconcile.finetunejob import dataset_status

    dataset = dataset_status(result)
    assert dataset["screening"] == {"counts": {"payment_card": 1, "email": 1}, "lines": 1, "redactedMessages": 0,
                                    "findings": [{"file": "training", "line": 21, "message": 1,
                                                  "kind": "payment_card", "action": "report"},
                                                 {"file": "training", "line": 21, "message": 1,
                                                  "kind": "email", "action": "report"}]}


def test_redact_trains_and_counts_the_redacted_text(tokenizer, tmp_path: Path) -> None:
    lines = good_lines(20) + [chat(f"Refund to {IBAN}, call {PHONE}", f"Sent to {EMAIL}.")]
    redacted = good_lines(20) + [chat("Refund to [IBAN], call [PHONE]", "Sent to [EMAIL].")]
    config = config_for(_write(tmp_path, lines), screening=contract.DataScreening(personal_data="redact"))
    result = validate(config, tokenizer)
    assert result.ok and result.screening is not None and result.screening.redacted_messages == 2
    assert any("redacted before counting and training" in w for w in result.warnings)
    # The counts are those of the file as if it had been written redacted.
    (tmp_path / "redacted.jsonl").write_text("\n".join(redacted) + "\n")
    expected = validate(config_for(tmp_path / "redacted.jsonl"), tokenizer)
    assert result.tokens_per_epoch == expected.tokens_per_epoch
    assert not any(secret in result.model_dump_json() for secret in SECRETS)


def test_reject_fails_naming_the_line_and_the_trainer_refuses_too(tokenizer, tmp_path: Path) -> None:
    lines = good_lines(20) + [chat("Hi", f"Your card {CARD} is on file.")]
    config = config_for(_write(tmp_path, lines), screening=contract.DataScreening(personal_data="reject"))
    result = validate(config, tokenizer)
    assert not result.ok
    problem = result.problems[0]
    assert (problem.line, problem.kind.value) == (21, "screening_rejected")
    assert "messages[2] holds payment_card" in problem.message and "spec.dataScreening" in problem.message
    assert CARD not in result.model_dump_json()
    # The blocklist's own policy: here only reported, beside personal data redacted.
    mixed = contract.DataScreening(personal_data="redact", blocklist=["ollie shop"], blocklist_policy="report")
    result = validate(config_for(_write(tmp_path, lines), screening=mixed), tokenizer)
    assert result.ok and result.screening.counts == {"payment_card": 1, "blocklist": 21}


def test_the_trainer_trains_on_exactly_what_validation_redacted_and_counted(tmp_path: Path) -> None:
    from hone_trainer.training.trainer import Trainer
    from hone_dev.tiny import make_tiny_llama

    tokenizer = make_tokenizer(tmp_path / "model")
    make_tiny_llama(tmp_path / "model")
    path = _write(tmp_path, good_lines(20) + [chat(f"Mail me at {EMAIL}", "Will do.")])
    config = config_for(path, batch_size=4, screening=contract.DataScreening(personal_data="redact")).model_copy(
        update={"base_model": contract.ModelSource(location=str(tmp_path / "model"))})
    result = validate(config, tokenizer)
    assert result.ok and result.hyperparameters is not None
    trainer = Trainer(config.resolved(result.hyperparameters, result.examples, result.tokens_per_epoch))
    trainer._setup_data()  # holds the file to the validated counts: it would refuse unredacted text
    text = "".join(tokenizer.decode(e.input_ids) for e in trainer.train_data)
    assert "[EMAIL]" in text and EMAIL not in text
    assert sum(len(e.input_ids) for e in trainer.train_data) == result.tokens_per_epoch
    # Without the screening the trainer reads other text than was validated, and says so instead of training.
    from hone_trainer.training.trainer import DataError

    unscreened = trainer.config.model_copy(update={"screening": contract.DataScreening(personal_data="off")})
    with pytest.raises(DataError, match="changed since it was validated"):
        Trainer(unscreened)._setup_data()


def test_the_finetunejob_spec_and_the_chart_default_reach_the_trainer() -> None:
    from hone_operator.api.v1alpha1 import FineTuneJob
    from hone_operator.builders import finetunejob as ftj_build
    from hone_operator.settings import OperatorSettings
    from hone_dev.repo import load_sample

    obj = load_sample("finetunejob-minimal.yaml")
    obj["metadata"].update(namespace="team-a", uid="u-1")
    settings = OperatorSettings(data_screening={"personalData": "redact", "blocklist": ["acme"]})

    def screening_of(body: dict) -> dict:
        objs = ftj_build.all_objects(FineTuneJob.model_validate(body), settings)
        cm = next(o for o in objs if o["kind"] == "ConfigMap" and "config.json" in o.get("data", {}))
        return json.loads(cm["data"]["config.json"])["screening"]

    assert screening_of(obj) == {"personalData": "redact", "kinds": ["email", "phone", "payment_card", "iban"],
                                 "patterns": [], "blocklist": ["acme"], "blocklistPolicy": "reject",
                                 "moderationPolicy": "reject"}
    obj["spec"]["dataScreening"] = {"personalData": "reject", "patterns": [{"name": "ticket", "regex": "T-[0-9]+"}],
                                    "moderation": {"url": "http://guard.safety.svc/v1/moderations"}}
    assert screening_of(obj)["personalData"] == "reject"
    assert screening_of(obj)["moderationUrl"] == "http://guard.safety.svc/v1/moderations"
    assert screening_of(obj)["patterns"] == [{"name": "ticket", "regex": "T-[0-9]+"}]
    # The endpoint's token: a Secret mounted (read-only, as a file) into the pods, its path in the config.
    obj["spec"]["dataScreening"]["moderation"]["apiKeySecret"] = {"name": "guard-token"}
    assert screening_of(obj)["moderationApiKeyFile"] == "/var/run/secrets/hone/guard-token/api-key"
    objs = ftj_build.all_objects(FineTuneJob.model_validate(obj), settings)
    validation_job = next(o for o in objs if o["kind"] == "Job")
    pod = validation_job["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "guard-token")
    assert {"name": volume["name"], "mountPath": "/var/run/secrets/hone/guard-token", "readOnly": True} in \
        pod["containers"][0]["volumeMounts"]


PLANTED = [  # (line, message index, kind) of every planted value; line 3 holds a Luhn-invalid card: no finding
    chat("Email me at ana@example.com", "Sure."),
    chat("Card 5555 5555 5555 4444 please", "Charged."),
    chat("Card 5555 5555 5555 4445 please", "That number is wrong."),
    chat(f"IBAN {IBAN}", "Refund sent to [your account]."),
    chat("What about Acme Rockets?", "Acme Rockets is a competitor."),
]
EXPECTED = [(21, 1, "email"), (22, 1, "payment_card"), (24, 1, "iban"), (25, 1, "blocklist"), (25, 2, "blocklist")]


@pytest.mark.parametrize("policy", ["report", "redact", "reject"])
def test_planted_values_are_found_exactly_by_line_under_each_policy(tokenizer, tmp_path: Path, policy: str) -> None:
    cfg = contract.DataScreening(personal_data=policy, blocklist=["acme rockets"], blocklist_policy=policy)
    path = _write(tmp_path, good_lines(20) + PLANTED)
    result = validate(config_for(path, screening=cfg), tokenizer)
    assert [(f.line, f.message, f.kind) for f in result.screening.findings] == EXPECTED
    assert {f.action for f in result.screening.findings} == {policy}
    assert result.ok is (policy != "reject")
    if policy == "reject":
        assert [p.line for p in result.problems] == [21, 22, 24, 25, 25]
    from hone_trainer.training.validate import read_file

    read = read_file(contract.DataFile(location=str(path)), "training")
    screening.screen(read, cfg)
    trained = json.dumps([m.content for e in read.examples for m in e.messages])
    planted = ["ana@example.com", "5555 5555 5555 4444", IBAN, "Acme Rockets"]
    if policy == "redact":  # what trains holds none of them; the Luhn-invalid number is left as it was
        assert not any(value in trained for value in planted) and "5555 5555 5555 4445" in trained
    else:
        assert all(value in trained for value in planted)


def test_a_moderations_endpoint_flags_messages_and_an_unreachable_one_fails_validation(tokenizer,
                                                                                       tmp_path: Path) -> None:
    import http.server
    import threading

    from hone_dev.cluster import free_port

    seen: list[list[str]] = []

    class Moderations(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - OpenAI's moderations answer: one result per input
            if self.headers.get("Authorization") != "Bearer guard-secret":
                body = b'{"error": {"message": "invalid api key", "code": "invalid_api_key"}}'
                self.send_response(401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            inputs = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["input"]
            seen.append(inputs)
            body = json.dumps({"id": "modr-1", "model": "guard", "results": [
                {"flagged": "lock picking" in text, "categories": {"illicit": "lock picking" in text}}
                for text in inputs]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Moderations)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/moderations"
    path = _write(tmp_path, good_lines(40) + [chat("Teach me lock picking for my neighbour's door", "Here is how.")])
    token = tmp_path / "api-key"
    token.write_text("guard-secret\n")  # as a Secret's file: the trailing newline is not part of the token
    try:
        reported = validate(config_for(path, screening=contract.DataScreening(
            moderation_url=url, moderation_policy="report", moderation_api_key_file=str(token))), tokenizer)
        assert reported.ok and reported.screening.counts == {"moderation:illicit": 1}
        assert [(f.line, f.message, f.kind) for f in reported.screening.findings] == [(41, 1, "moderation:illicit")]
        assert sum(len(batch) for batch in seen) == 41 * 3 and max(len(b) for b in seen) == 32  # every message
        rejected = validate(config_for(path, screening=contract.DataScreening(
            moderation_url=url, moderation_api_key_file=str(token))), tokenizer)
        assert not rejected.ok and rejected.problems[0].line == 41
        assert "flagged by the moderations endpoint (illicit)" in rejected.problems[0].message
        # Without its token the endpoint answers 401: nothing passes unchecked, and the error says so.
        refused = validate(config_for(path, screening=contract.DataScreening(moderation_url=url)), tokenizer)
        assert not refused.ok and refused.problems[0].kind.value == "screening_unavailable"
        assert "HTTP Error 401" in refused.problems[0].message
        missing = validate(config_for(path, screening=contract.DataScreening(
            moderation_url=url, moderation_api_key_file=str(tmp_path / "gone" / "api-key"))), tokenizer)
        assert not missing.ok and "spec.dataScreening.moderation.apiKeySecret" in missing.problems[0].message
    finally:
        server.shutdown()
    down = f"http://127.0.0.1:{free_port()}/v1/moderations"
    failed = validate(config_for(path, screening=contract.DataScreening(moderation_url=down)), tokenizer)
    assert not failed.ok and failed.problems[0].kind.value == "screening_unavailable"
    assert down in failed.problems[0].message

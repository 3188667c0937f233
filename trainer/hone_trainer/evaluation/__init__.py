"""Evaluation after training: OpenAI's graders on an eval file and the safety suite, on the base model and the
fine-tune side by side (:mod:`.runner`), the refusal judge (:mod:`.refusal`) and the graders (:mod:`.graders`)."""

"""The checks an upload passes before it is stored, as OpenAI's Files API makes them for fine-tuning data.

On upload a fine-tuning file must be JSONL: a ``.jsonl`` name, UTF-8, and a
JSON value on every non-blank line; the first line that is not is named in
the 400. Whether each line is a trainable chat example (roles, an assistant
turn, the token counts) is the job's ValidatingFiles step, as on OpenAI,
where it fails the job with ``invalid_training_file`` naming the line.
"""

from __future__ import annotations

import io

from hone_operator.openai_api.errors import bad_request

PURPOSES = ("fine-tune",)
#: Problems that make a file not JSONL at all (the rest are the job's to report).
NOT_JSONL = {"invalid_json", "invalid_encoding", "line_too_long", "empty_file"}


def check_upload(filename: str, purpose: str, content: bytes, max_bytes: int) -> None:
    from hone_trainer.training.data import read_jsonl

    if purpose not in PURPOSES:
        raise bad_request(f"purpose {purpose!r} is not supported by Hone; upload fine-tuning data with purpose "
                          "'fine-tune'", "purpose")
    if not filename.lower().endswith(".jsonl"):
        raise bad_request(f"Invalid file format for Fine-Tuning API. Must be .jsonl (got {filename!r})", "file",
                          "invalid_file_format")
    if len(content) > max_bytes:
        raise bad_request(f"the file is {len(content):,} bytes; the limit is {max_bytes:,}", "file", "file_too_large")
    result = read_jsonl(io.BytesIO(content))
    for problem in result.problems:
        if problem.kind.value in NOT_JSONL:
            where = f"line {problem.line}: " if problem.line is not None else ""
            raise bad_request(f"Invalid file format for Fine-Tuning API. {where}{problem.message}", "file",
                              "invalid_file_format")

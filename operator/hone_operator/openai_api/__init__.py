"""``hone api``: OpenAI's fine-tuning API over Hone, for the client code people already have.

A FineTuneJob is the job: ``POST /v1/fine_tuning/jobs`` creates one and every
read is a view of one (:mod:`.objects` maps the two ways), so a job made
through the API and one applied as YAML are the same kind of object. Around
it, the Files API (uploads checked as OpenAI checks them), events,
checkpoints, the model list, and chat completions routed by ``model`` to a
server that has it.

* :mod:`.objects`: FineTuneJob and records -> OpenAI's JSON objects;
* :mod:`.errors`: OpenAI's error object, and the status codes it goes with;
* :mod:`.requests`: what a client may send, validated, with OpenAI's messages;
* :mod:`.files`: JSONL checks on upload;
* :mod:`.local`: the store and worker of ``hone api --local`` (one machine,
  jobs run by the local trainer one at a time, models served on demand);
* :mod:`.app`: the HTTP routes.
"""

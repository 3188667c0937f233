"""The runtime's first job: a FineTuneJob's ValidatingFiles step and its training.

* ``data``: reading OpenAI's chat JSONL, every problem with its file and line;
* ``formatting``: the model's chat template, tokens and assistant-only loss masks;
* ``validate``: ``python -m hone_trainer validate`` (counts, warnings, ``auto``, cost);
* ``packing``: each step's examples, packed into rows and split across ranks;
* ``distributed``: the launcher's variables, the process group, devices, the seed;
* ``ds_config``: the generated DeepSpeed config;
* ``trainer``: ``python -m hone_trainer train``, setup, the loop, checkpoints, publishing;
* ``checkpoints``: complete-or-absent checkpoints, retention, the S3 mirror;
* ``publish``: the result, with its manifest, atomically to a PVC path or S3;
* ``report``: progress into ``status.progress`` (or a file) and the trainer's metrics.
"""

"""Development tooling for Hone: what tests, benchmarks and examples run the product against.

Not part of the ``hone`` distribution and never in the images (``devtools/`` is a third
source root, on pytest's ``pythonpath``; scripts under ``bench/`` and ``examples/`` put it
on ``sys.path`` themselves). It works from a checkout: it reads ``crds/`` and ``charts/``.

* :mod:`.apiserver`: an emulated Kubernetes API server (what it implements and what it
  does not is in its docstring);
* :mod:`.node`: a node that runs the pods for real (processes in Linux namespaces), with the
  Job, ReplicaSet and Deployment controllers, cluster DNS and Service addresses;
  :mod:`.devcluster` serves both for ``hone dev-cluster``;
* :mod:`.cluster`: the real operator as a subprocess, and the Job controller played by hand;
* :mod:`.resources`: FineTuneJobs and ModelServings as the operator tests apply them, with
  their Jobs finished and Deployments rolled out by hand;
* :mod:`.s3`: an S3-compatible endpoint on loopback (moto);
* :mod:`.controllers`: a Job controller that completes Jobs at once (benchmarks);
* :mod:`.serving`: adapters trained by the real trainer, the real server as a subprocess;
* :mod:`.tiny`: a tiny Llama and tokenizer built in a second, no hub needed;
* :mod:`.repo`: the repository's paths (CRDs, samples, chart), the CRD schemas as JSON
  Schema validators, and helm.
"""

from pathlib import Path

#: The repository checkout the tooling works from.
ROOT = Path(__file__).resolve().parents[2]

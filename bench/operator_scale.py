"""Operator scale benchmark: many FineTuneJobs against the emulated API server.

    python bench/operator_scale.py [--jobs 500] [--runs 3]

Creates N FineTuneJobs as fast as one client can, while an in-process stand-in
for the Job controller finishes every validation Job at once and starts every
training Job's pod. Reports medians over runs of:

* latency from FineTuneJob create to its validation Job, from validation done
  to its training Job, and from create to training Job (p50 and p99);
* API writes per job by the operator, by verb and resource;
* writes during a quiet window once everything has converged (goal: 0);
* the operator's peak RSS.

Side by side it runs a baseline: the same operator with a single reconcile
worker, and prints the ratio of their p99 create -> training Job latency.
The emulated API server adds a fixed latency to every request (default 5 ms,
``--api-latency-ms``), because a real API server's round trip, not Python's
speed, is what concurrency in the operator is for.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer"), str(ROOT / "devtools")]

import yaml  # noqa: E402
from kubernetes import client, config  # noqa: E402

from hone_operator.kube import USER_AGENT, Kube  # noqa: E402
from hone_trainer import contract  # noqa: E402
from hone_dev.apiserver import ApiServerThread  # noqa: E402
from hone_dev.cluster import OperatorProcess, seed_namespace, wait_for  # noqa: E402
from hone_dev.controllers import InstantJobController  # noqa: E402

from stats import percentile  # noqa: E402  (bench/, the script's own folder)

NS = "bench"
FTJ = ("hone.dev", "v1alpha1", "finetunejobs")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_run(n: int, workers: int, quiet: float, rate: float = 0.0, latency: float = 0.0) -> dict[str, float | dict[str, float]]:
    validation = contract.to_termination_message(contract.ValidationResult(
        ok=True, examples=100, tokens_per_epoch=10_000, hyperparameters=contract.resolve_hyperparameters(100),
        billable_training_tokens=30_000))
    sample = yaml.safe_load((ROOT / "crds" / "samples" / "finetunejob-minimal.yaml").read_text())
    with ApiServerThread(latency=latency) as srv, tempfile.TemporaryDirectory() as tmp:
        controller = srv.call(lambda s: InstantJobController(s, validation))
        srv.call(lambda s: controller.start())
        kubeconfig = srv.write_kubeconfig(Path(tmp) / "kubeconfig")
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        kube = Kube(client.ApiClient(cfg))
        op = OperatorProcess(srv, Path(tmp) / "operator.log",
                             env={"HONE_RECONCILE_WORKERS": str(workers)}).start()
        try:
            seed_namespace(kube, NS)
            start = time.monotonic()
            for i in range(n):
                if rate:  # paced: a steady stream instead of one burst
                    time.sleep(max(0.0, start + i / rate - time.monotonic()))
                obj = yaml.safe_load(yaml.safe_dump(sample))
                obj["metadata"].update(name=f"ftj-{i:04d}", namespace=NS)
                kube.create(obj)

            def running() -> int:
                return srv.call(lambda s: sum((o.get("status") or {}).get("phase") == "Running"
                                              for o in s.store[FTJ].values()))
            wait_for(lambda: running() == n, timeout=900, interval=0.25, what=f"{n} FineTuneJobs Running")
            time.sleep(0.5)  # let the last status writes land before counting
            converged = len(srv.call(lambda s: s.writes(USER_AGENT)))
            time.sleep(quiet)
            audit = srv.call(lambda s: list(s.audit))
            rss = peak_rss_mib(op.proc.pid)
        finally:
            op.stop()

    ok = [a for a in audit if a.status < 300]
    created = {a.name: a.at for a in ok if a.verb == "create" and a.resource == "finetunejobs"}
    vjob = {a.name.removesuffix("-validate"): a.at for a in ok if a.verb == "create" and a.resource == "jobs"
            and a.name.endswith("-validate")}
    tjob = {a.name.removesuffix("-train"): a.at for a in ok if a.verb == "create" and a.resource == "jobs"
            and a.name.endswith("-train")}
    validated = controller.validated_at
    writes = [a for a in ok if a.verb in ("create", "patch", "update", "delete") and USER_AGENT in a.user_agent]
    by_kind = collections.Counter(f"{a.verb} {a.resource}{'/' + a.subresource if a.subresource else ''}"
                                  for a in writes)
    to_v = [vjob[k] - created[k] for k in created]
    v_to_t = [tjob[k] - validated[k] for k in created]
    to_t = [tjob[k] - created[k] for k in created]
    return {
        "create_to_validation_p50": percentile(to_v, 50), "create_to_validation_p99": percentile(to_v, 99),
        "validated_to_training_p50": percentile(v_to_t, 50), "validated_to_training_p99": percentile(v_to_t, 99),
        "create_to_training_p50": percentile(to_t, 50), "create_to_training_p99": percentile(to_t, 99),
        "writes_per_job": len(writes) / n,
        "writes_after_convergence": len(writes) - converged,
        "peak_rss_mib": rss,
        "by_kind": {k: v / n for k, v in sorted(by_kind.items())},
    }


def median_of(runs: list[dict], key: str) -> float:
    return statistics.median(float(r[key]) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8, help="reconcile workers of the measured operator")
    parser.add_argument("--quiet", type=float, default=5.0, help="seconds to watch for writes after convergence")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="create this many FineTuneJobs per second (0: all at once, as one burst)")
    parser.add_argument("--api-latency-ms", type=float, default=5.0,
                        help="latency the emulated API server adds to each request (a real one: 5-20 ms)")
    args = parser.parse_args()

    results: dict[str, list[dict]] = {"hone": [], "baseline (1 worker)": []}
    for run in range(args.runs):
        for label, workers in (("hone", args.workers), ("baseline (1 worker)", 1)):
            r = one_run(args.jobs, workers, args.quiet, args.rate, args.api_latency_ms / 1000)
            results[label].append(r)
            print(f"run {run + 1} {label}: create->training p50 {r['create_to_training_p50'] * 1000:.0f} ms, "
                  f"p99 {r['create_to_training_p99'] * 1000:.0f} ms", flush=True)

    keys = [("create_to_validation_p50", "ms"), ("create_to_validation_p99", "ms"),
            ("validated_to_training_p50", "ms"), ("validated_to_training_p99", "ms"),
            ("create_to_training_p50", "ms"), ("create_to_training_p99", "ms"),
            ("writes_per_job", ""), ("writes_after_convergence", ""), ("peak_rss_mib", "MiB")]
    how = f"at {args.rate:g}/s" if args.rate else "created in one burst"
    how += f", {args.api_latency_ms:g} ms API latency"
    print(f"\n{args.jobs} FineTuneJobs {how}, median of {args.runs} run(s)")
    print(f"{'metric':32} {'hone':>14} {'baseline':>14}")
    for key, unit in keys:
        scale = 1000 if unit == "ms" else 1
        h, b = median_of(results["hone"], key) * scale, median_of(results["baseline (1 worker)"], key) * scale
        print(f"{key + (' (' + unit + ')' if unit else ''):32} {h:14.1f} {b:14.1f}")
    print("\nwrites per job (hone, first run):")
    for kind, count in results["hone"][0]["by_kind"].items():
        print(f"  {kind:40} {count:.2f}")
    ratio = median_of(results["baseline (1 worker)"], "create_to_training_p99") / median_of(
        results["hone"], "create_to_training_p99")
    p99 = median_of(results["hone"], "create_to_training_p99")
    print(f"\np99 create->training: hone {p99 * 1000:.0f} ms; baseline/hone ratio {ratio:.2f}x")
    print(f"goal p99 < 1 s: {'met' if p99 < 1 else 'NOT met'}; "
          f"writes after convergence: {median_of(results['hone'], 'writes_after_convergence'):.0f} (goal 0)")


if __name__ == "__main__":
    main()

"""The server's Prometheus metrics: tokens and cost exactly as in ``usage``, requests, latency, queue."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hone_trainer.contract import ServerConfig

if TYPE_CHECKING:
    from hone_trainer.serving.state import State


class Metrics:
    def __init__(self, config: ServerConfig, state: "State"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series only double what a scrape sends

        self.registry = CollectorRegistry()
        self.prices = config.prices
        r = self.registry
        self.tokens = Counter("hone_inference_tokens_total", "Prompt and completion tokens served, as in `usage`.",
                              ["model", "type"], registry=r)
        self.cost = Counter("hone_cost_usd_total", "Cost of the tokens served at the price table, in US dollars.",
                            ["model", "kind"], registry=r)
        self.requests = Counter("hone_inference_requests_total", "Requests answered, by HTTP status code.",
                                ["model", "endpoint", "code"], registry=r)
        buckets = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
        self.duration = Histogram("hone_inference_request_duration_seconds", "Time from request to last byte.",
                                  ["model", "endpoint"], buckets=buckets, registry=r)
        self.ttft = Histogram("hone_inference_time_to_first_token_seconds", "Time from request to first token.",
                              ["model", "endpoint"], buckets=buckets, registry=r)
        Gauge("hone_inference_queue_depth", "Sequences waiting for a place in the batch.",
              registry=r).set_function(lambda: state.engine.waiting if state.engine else 0)
        Gauge("hone_inference_running_sequences", "Sequences being decoded.",
              registry=r).set_function(lambda: state.engine.running if state.engine else 0)
        Gauge("hone_inference_requests_in_flight", "Requests accepted and not yet answered.",
              registry=r).set_function(lambda: state.in_flight)
        Gauge("hone_inference_ready", "1 when the model and every adapter are loaded.",
              registry=r).set_function(lambda: 1 if state.ready else 0)
        self.info = Gauge("hone_inference_model_info", "Models this server serves (value 1).",
                          ["model", "base_model", "adapter"], registry=r)
        r.register(_PrefixCache(state))

    def meter(self, model: str, prompt: int, completion: int) -> None:
        self.tokens.labels(model, "prompt").inc(prompt)
        self.tokens.labels(model, "completion").inc(completion)
        # Exact, not rounded per request: rounding 27 tokens to a millionth of a dollar loses 1%.
        self.cost.labels(model, "prompt").inc(prompt * self.prices.prompt / 1_000_000)
        self.cost.labels(model, "completion").inc(completion * self.prices.completion / 1_000_000)


class _PrefixCache:
    """The engine's prefix cache: prompt tokens it saved computing, and what it holds."""

    def __init__(self, state: "State") -> None:
        self.state = state

    def describe(self) -> list:
        return []  # collected at scrape time only (the engine comes with the model)

    def collect(self):  # type: ignore[no-untyped-def]
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        prefixes = self.state.engine.prefixes if self.state.engine is not None else None
        yield CounterMetricFamily(
            "hone_inference_prefix_cache_hit_tokens", "Prompt tokens whose keys and values came from the prefix "
            "cache instead of being computed (they are billed as prompt tokens all the same).",
            value=prefixes.hit_tokens if prefixes is not None else 0)
        yield GaugeMetricFamily("hone_inference_prefix_cache_tokens", "Prompt tokens the prefix cache holds.",
                                value=prefixes.tokens if prefixes is not None else 0)

"""Batched generation for the built-in server: many requests, many adapters, one model.

One engine thread owns the model. Requests wait in a queue; at every step
the engine admits waiting sequences (up to ``max_batch_size`` in flight),
prefills them together, and joins them to the running batch, so new
requests start without waiting for the running ones to finish (continuous
batching). Each step decodes one token for every running sequence in one
forward pass.

Where several sequences wait at once (a burst), the engine on a CPU
prefills half of them, then in the very next step the rest (with half of
any that came meanwhile). There a prefill costs about what its prompt
tokens cost, so the first half gets its first token after half the
arithmetic, and the rest when one prefill of all of them would have given
it; the batch's running rows pause about as long either way. (On a GPU a
few short prompts cost about what one does, and a burst is prefilled whole.)

Several LoRA adapters share the base weights. Their matrices are stacked
per layer (:mod:`hone_trainer.serving.lora`) and every step tells the
stacked layers which adapter each row uses (``__base__`` for the base
model), so each row goes through its own adapter's LoRA matrices only, and a
batch mixing adapters costs about what a batch on one costs. Where the
adapters cannot be stacked, the batch passes peft's ``adapter_names``
instead (same result, more time per adapter). A row can never be computed
with another row's adapter: the names travel with the rows through every
join and removal.

The batch is left-padded. Its KV cache is a ``DynamicCache`` whose layers
keep spare room at the end (:class:`_ReservedLayer`): a decode step writes
its token's keys and values in place instead of copying the whole cache
(``torch.cat``, what transformers' own layer does), so a step's cost does not
grow with what is already cached; the tensors are padded, concatenated and
indexed only when sequences join or finish. The attention mask marks
padding, and positions count real tokens only, so a sequence's logits do not
depend on what else is in the batch (up to float rounding). Models with
sliding-window or other non-standard cache layers are still served, but a
batch then admits new sequences only when it is empty.

A prefill computes only what the prefix cache (:mod:`hone_trainer.serving.prefix`)
does not hold: a row's cached keys and values fill the first columns of the
new rows' cache, the rest of its prompt the columns after them, with the
padding of either part masked.

On CPU the model's linear layers are packed for oneDNN when the engine is
built, where that is faster on the processor (:mod:`hone_trainer.serving.packed`:
on some, about twice MKL's speed at a step's few rows; on others faster at
eight rows and slower at one, and then each call takes the faster path for
its rows). A decoding step of a Llama-architecture model runs as one loop
over the model's own modules (:mod:`hone_trainer.serving.decode`), without
transformers' per-call wrappers, to the same logits.

The engine thread should be the only live thread that has run torch's
parallel CPU work: each such thread gets its own OpenMP team,
and while two teams exist neither spins between regions, so every operator
pays a wake-up (measured: decode steps 1.6 to 2.4 times slower). The server
loads on a thread that ends before the engine's first step; code that builds
an engine in its own process should do the same.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

log = logging.getLogger("hone.engine")

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class GenerationEvent:
    """What the engine tells a waiting request: new text, or that its sequence ended."""

    text: str = ""
    finished: bool = False
    finish_reason: str | None = None  # "stop" | "length" | "error" | "cancelled"
    error: str | None = None
    tokens: int = 0  # the sequence's generated tokens this event accounts for (all of them when finished)


@dataclass(eq=False)
class SequenceState:
    """One choice of one request, from the queue to its last token."""

    prompt_ids: list[int]
    adapter: str  # peft adapter name, or BASE_ADAPTER
    params: SamplingParams
    emit: Callable[[GenerationEvent], None]  # must be thread-safe
    generated: list[int] = field(default_factory=list)
    emitted_chars: int = 0
    prefilled: bool = False
    cached_tokens: int = 0  # prompt tokens whose keys and values came from the prefix cache
    cancelled: bool = False
    finished: bool = False
    generator: torch.Generator | None = None

    def cancel(self) -> None:
        self.cancelled = True


#: Columns of spare room a cache layer reserves when it has to grow: one copy of the cache per this many steps.
RESERVE = 64


class _ReservedLayer(DynamicLayer):
    """A full-attention cache layer that appends in place.

    ``keys`` and ``values`` are views of the first ``length`` columns of larger buffers; ``update`` writes the
    new columns into the spare room and re-slices, and only when the room runs out copies into buffers
    :data:`RESERVE` columns longer than needed.
    """

    @classmethod
    def holding(cls, keys: torch.Tensor, values: torch.Tensor, room: int = RESERVE) -> "_ReservedLayer":
        layer = cls()
        layer.device = keys.device
        layer.is_initialized = True
        layer.adopt(keys, values, room)
        return layer

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, room: int = RESERVE) -> None:
        """Hold these tensors (copied) with ``room`` spare columns after them."""
        length = keys.shape[2]
        self._k = keys.new_empty(keys.shape[:2] + (length + room,) + keys.shape[3:])
        self._v = values.new_empty(values.shape[:2] + (length + room,) + values.shape[3:])
        self._k[:, :, :length] = keys
        self._v[:, :, :length] = values
        self.length = length
        self.keys, self.values = self._k[:, :, :length], self._v[:, :, :length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        new = key_states.shape[2]
        if self.length + new > self._k.shape[2]:
            self.adopt(self.keys, self.values, room=new + RESERVE)
        end = self.length + new
        self._k[:, :, self.length:end] = key_states
        self._v[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self._k[:, :, :end], self._v[:, :, :end]
        return self.keys, self.values


class _Batch:
    """The running rows: their KV cache, attention mask and the token each feeds next.

    The cache object lives across decode steps (the model appends to it in
    place); its tensors are only rebuilt when rows join or leave.
    """

    def __init__(self) -> None:
        self.rows: list[SequenceState] = []
        self.cache: Any = None  # DynamicCache
        self.mask: torch.Tensor | None = None  # [B, L] long
        self.next_tokens: torch.Tensor | None = None  # [B]

    def __len__(self) -> int:
        return len(self.rows)

    def _layers(self) -> list[Any]:
        return list(self.cache.layers)

    def join(self, other: "_Batch") -> None:
        if not self.rows:
            self.rows, self.cache, self.mask, self.next_tokens = other.rows, other.cache, other.mask, other.next_tokens
            return
        assert self.mask is not None and other.mask is not None
        length = max(self.mask.shape[1], other.mask.shape[1])

        def pad(t: torch.Tensor, seq_dim: int) -> torch.Tensor:
            missing = length - t.shape[seq_dim]
            if missing == 0:
                return t
            spec = [0, 0] * (t.dim() - 1 - seq_dim) + [missing, 0]
            return torch.nn.functional.pad(t, spec)

        for mine, theirs in zip(self._layers(), other._layers()):
            _set(mine, torch.cat([pad(mine.keys, 2), pad(theirs.keys, 2)]),
                 torch.cat([pad(mine.values, 2), pad(theirs.values, 2)]))
        self.mask = torch.cat([pad(self.mask, 1), pad(other.mask, 1)])
        assert self.next_tokens is not None and other.next_tokens is not None
        self.next_tokens = torch.cat([self.next_tokens, other.next_tokens])
        self.rows = self.rows + other.rows

    def keep(self, indices: list[int]) -> None:
        """Drop every row not in ``indices``, then columns that are padding in every remaining row."""
        if len(indices) == len(self.rows):
            return
        self.rows = [self.rows[i] for i in indices]
        if not self.rows:
            self.cache, self.mask, self.next_tokens = None, None, None
            return
        assert self.mask is not None and self.next_tokens is not None
        idx = torch.tensor(indices, device=self.mask.device)
        self.mask = self.mask.index_select(0, idx)
        self.next_tokens = self.next_tokens.index_select(0, idx)
        used = self.mask.sum(0).nonzero()
        start = int(used[0]) if len(used) else 0
        self.mask = self.mask[:, start:]
        for layer in self._layers():
            _set(layer, layer.keys.index_select(0, idx)[:, :, start:], layer.values.index_select(0, idx)[:, :, start:])


def _set(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    """Give a cache layer new contents (a reserved layer copies them into buffers with room to grow)."""
    if isinstance(layer, _ReservedLayer):
        layer.adopt(keys, values)
    else:
        layer.keys, layer.values = keys, values


class Engine:
    """Owns the model; :meth:`submit` is safe to call from any thread."""

    def __init__(self, model: Any, tokenizer: Any, *, max_batch_size: int = 8, adapters: Sequence[str] = (),
                 eos_token_ids: Sequence[int] = (), prefix_cache_tokens: int = 0, cpu_linear: str = "auto"):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.adapters = set(adapters)
        from hone_trainer.serving import lora

        self.stacked = lora.install(model, sorted(self.adapters)) if adapters else None
        self.device = next(model.parameters()).device
        self._cache_kwarg = _cache_kwarg(model)
        self.decode_step: Any = None  # set below, once the linear layers are what they will be
        if self.device.type == "cpu" and cpu_linear != "dense":
            from hone_trainer.serving import packed

            # oneDNN with weights laid out once: on some processors twice MKL's speed at a step's few rows, on
            # others slower at one row and faster at eight; "auto" times both on this one, at 1, 2, 4... rows.
            rows = sorted({min(2**i, max_batch_size) for i in range(max_batch_size.bit_length() + 1)})
            packed.pack(model, self._step_alone if cpu_linear == "auto" else None, rows=rows)
        from hone_trainer.serving import decode

        # Decoding steps of a Llama-architecture model skip transformers' per-call wrappers (same logits).
        self.decode_step = decode.build(model)
        config = model.config
        self.context_length = int(getattr(config, "max_position_embeddings", 0) or 2048)
        self.eos = set(int(t) for t in eos_token_ids)
        self.can_join = _full_attention_only(config)
        from hone_trainer.serving.prefix import PrefixCache

        # Only over full-attention caches (a sliding window drops the prefix's first tokens).
        self.prefixes = PrefixCache(prefix_cache_tokens) if prefix_cache_tokens > 0 and self.can_join else None
        self._pending: deque[SequenceState] = deque()
        self._pending_lock = threading.Lock()
        self._batch = _Batch()
        # A burst is prefilled in two halves on a CPU, where a prefill costs what its tokens cost; not on a GPU,
        # where a few short prompts cost about what one does.
        self._halve_bursts = self.can_join and self.device.type == "cpu"
        self._deferred = 0  # the first sequences waiting, which a step left for the next one (half of a burst)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hone-engine", daemon=True)
        self.steps = 0

    # ---- public ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    @property
    def waiting(self) -> int:
        return len(self._pending)

    @property
    def running(self) -> int:
        return len(self._batch)

    def submit(self, seqs: Sequence[SequenceState]) -> None:
        """Queue a request's sequences, all or none: anything wrong with one (an unknown adapter, a seed
        out of range) raises before any of them is queued, so no sequence runs for a request that failed."""
        for seq in seqs:
            if seq.adapter != BASE_ADAPTER and seq.adapter not in self.adapters:
                raise KeyError(seq.adapter)
            if seq.params.seed is not None:
                seq.generator = torch.Generator(device="cpu").manual_seed(seq.params.seed)
        with self._pending_lock:
            self._pending.extend(seqs)
        self._wake.set()

    def cancel(self, seqs: Sequence[SequenceState]) -> None:
        """Stop these sequences: a waiting one ends at once, a running one after the step in progress;
        each then gets its finished event (reason ``cancelled``), unless it had finished already."""
        for seq in seqs:
            seq.cancel()
        self._wake.set()

    # ---- the loop ----------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            if self._stop.is_set() and not len(self._batch) and not self._pending:
                return
            admitted = self._admit()
            if not admitted and not len(self._batch):
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                with torch.inference_mode():
                    if admitted:
                        self._prefill(admitted)
                    else:
                        self._decode()
                self.steps += 1
            except Exception as exc:  # noqa: BLE001 - fail the rows, keep serving
                log.exception("generation step failed")
                for seq in list(self._batch.rows) + admitted:
                    self._finish(seq, "error", error=f"generation failed: {exc}")
                self._batch = _Batch()

    def _admit(self) -> list[SequenceState]:
        """The waiting sequences that join the batch now, as many as fit: those an earlier step left for
        this one, and half (rounded up) of those that came since; cancelled ones end here, batch full or not."""
        with self._pending_lock:
            if any(s.cancelled for s in self._pending):
                for seq in [s for s in self._pending if s.cancelled]:
                    self._finish(seq, "cancelled")
                self._deferred -= sum(s.cancelled for s in list(self._pending)[:self._deferred])  # the first ones
                self._pending = deque(s for s in self._pending if not s.cancelled)
            room = self.max_batch_size - len(self._batch) if (self.can_join or not len(self._batch)) else 0
            fresh = len(self._pending) - self._deferred
            take = min(room, self._deferred + ((fresh + 1) // 2 if self._halve_bursts else fresh))
            out = [self._pending.popleft() for _ in range(take)]
            self._deferred = len(self._pending) if self._halve_bursts else 0  # each one is left once at most
        return out

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: Any,
                 rows: list[SequenceState]) -> tuple[torch.Tensor, Any]:
        kwargs: dict[str, Any] = {}
        if self.stacked is not None:
            self.stacked.select([r.adapter for r in rows], self.device)
        if self.decode_step is not None and cache is not None and input_ids.shape[1] == 1 and len(cache.layers):
            return self.decode_step(input_ids, mask, positions, cache), cache
        if self.stacked is None and self.adapters:  # adapters that could not be stacked: peft's per-adapter path
            kwargs["adapter_names"] = [r.adapter for r in rows]
        kwargs[self._cache_kwarg] = cache
        out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1, **kwargs)
        cache = getattr(out, "cache", None)
        return out.logits[:, -1, :].float(), cache if cache is not None else out.past_key_values

    def _step_alone(self, rows: int) -> None:
        """One decoding step of ``rows`` rows on the base model over an empty cache (for timing at load)."""
        ids = torch.zeros((rows, 1), dtype=torch.long, device=self.device)
        base = [SimpleNamespace(adapter=BASE_ADAPTER)] * rows
        self._forward(ids, torch.ones_like(ids), torch.zeros_like(ids), None, base)  # type: ignore[arg-type]

    def _prefill(self, seqs: list[SequenceState]) -> None:
        """Compute the prompts (those parts not in the prefix cache) and join them to the batch.

        The columns are the cached prefixes (``P`` columns, each row's right-aligned) then the rest of the
        prompts (``L`` columns, right-aligned): padding in between is masked, and positions count each row's
        real tokens, so a row's logits are what its whole prompt computed alone gives (up to rounding)."""
        hits = [self.prefixes.lookup(s.adapter, s.prompt_ids) if self.prefixes else (0, []) for s in seqs]
        cached = [n for n, _ in hits]
        for s, n in zip(seqs, cached):
            s.cached_tokens = n
        rest = [s.prompt_ids[n:] for s, n in zip(seqs, cached)]
        P, L = max(cached), max(len(r) for r in rest)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(seqs), L), pad, dtype=torch.long)
        mask = torch.zeros((len(seqs), P + L), dtype=torch.long)
        for i, (n, r) in enumerate(zip(cached, rest)):
            ids[i, L - len(r):] = torch.tensor(r)
            mask[i, P - n:P] = 1
            mask[i, P + L - len(r):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(1) - 1).clamp(min=0)[:, P:]
        cache = DynamicCache()
        if P:  # the cached prefixes, each row's right-aligned in the first P columns
            template = next(layers for n, layers in hits if n)
            for layer, (k0, v0) in enumerate(template):
                keys = k0.new_zeros((len(seqs), k0.shape[0], P, k0.shape[2]))
                values = v0.new_zeros((len(seqs), v0.shape[0], P, v0.shape[2]))
                for i, (n, layers) in enumerate(hits):
                    if n:
                        keys[i, :, P - n:], values[i, :, P - n:] = layers[layer]
                cache.layers.append(_ReservedLayer.holding(keys, values, room=L + RESERVE))
        logits, cache = self._forward(ids, mask, positions, cache, seqs)
        if self.can_join:  # from now on, steps append in place
            cache.layers[:] = [layer if isinstance(layer, _ReservedLayer) else
                               _ReservedLayer.holding(layer.keys, layer.values) for layer in cache.layers]
        if self.prefixes is not None:
            self._keep_prefixes(seqs, cached, mask, cache)
        for s in seqs:
            s.prefilled = True
        new = _Batch()
        tokens, failed = self._sample(logits, seqs)
        new.rows, new.cache, new.mask, new.next_tokens = seqs, cache, mask, tokens
        self._batch.join(new)
        self._after_step(offset=len(self._batch) - len(seqs), failed=failed)

    def _keep_prefixes(self, seqs: list[SequenceState], cached: list[int], mask: torch.Tensor, cache: Any) -> None:
        """Store what the prefix cache does not hold yet of each prompt (all of it but its last token)."""
        assert self.prefixes is not None
        for i, (s, n) in enumerate(zip(seqs, cached)):
            keep = self.prefixes.cacheable(s.prompt_ids)
            if keep <= n:
                continue
            cols = mask[i].nonzero().flatten()[:keep]  # the row's real tokens, in order
            self.prefixes.store(s.adapter, s.prompt_ids, [(layer.keys[i].index_select(1, cols),
                                                           layer.values[i].index_select(1, cols))
                                                          for layer in cache.layers])

    def _decode(self) -> None:
        batch = self._batch
        assert batch.mask is not None and batch.next_tokens is not None
        positions = batch.mask.sum(1, keepdim=True)
        mask = torch.cat([batch.mask, torch.ones_like(batch.mask[:, :1])], dim=1)
        logits, batch.cache = self._forward(batch.next_tokens[:, None], mask, positions, batch.cache, batch.rows)
        batch.mask = mask
        batch.next_tokens, failed = self._sample(logits, batch.rows)
        self._after_step(offset=0, failed=failed)

    def _sample(self, logits: torch.Tensor, rows: list[SequenceState]) -> tuple[torch.Tensor, dict[int, str]]:
        """The next token of each row, and the rows whose sampling failed (index -> why): one row's
        failure ends that row alone, never the others in the batch."""
        tokens = logits.argmax(dim=-1)
        failed: dict[int, str] = {}
        for i, seq in enumerate(rows):
            if seq.params.temperature <= 0:
                continue
            try:
                tokens[i] = self._sample_row(logits[i], seq)
            except Exception as exc:  # noqa: BLE001 - this row's error, reported to its request
                log.exception("sampling failed for one sequence")
                failed[i] = f"sampling failed: {exc}"
        return tokens, failed

    @staticmethod
    def _sample_row(logits: torch.Tensor, seq: SequenceState) -> torch.Tensor:
        p = seq.params
        # Shifted so that the largest logit is 0 before dividing: however small the temperature
        # (1e-300 included), nothing overflows to inf, the top token keeps probability > 0, and
        # the distribution tends to greedy instead of turning into NaN for the whole batch.
        row = logits.double()
        probs = torch.softmax((row - row.max()) / p.temperature, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = probs.sort(descending=True)
            cut = sorted_probs.cumsum(0) - sorted_probs >= p.top_p  # keep the smallest set reaching top_p
            sorted_probs[cut] = 0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
        return torch.multinomial(probs.cpu(), 1, generator=seq.generator).to(logits.device)[0]

    def _after_step(self, offset: int, failed: dict[int, str]) -> None:
        """Record the new token of each row from ``offset`` on (the rows that just stepped),
        stream their text, and drop the rows that finished (or whose sampling failed).

        Finished rows leave the batch before their requests hear that they ended, so a request that
        has its answer never still counts among the running sequences (the metrics, a drain)."""
        batch = self._batch
        assert batch.next_tokens is not None and batch.mask is not None
        new_tokens = batch.next_tokens.tolist()
        cached = batch.mask.sum(1).tolist()  # tokens in each row's cache
        keep: list[int] = list(range(offset))
        ended: list[tuple[SequenceState, str, str | None]] = []
        for i, seq in enumerate(batch.rows[offset:], start=offset):
            if i - offset in failed:
                ended.append((seq, "error", failed[i - offset]))
                continue
            token = new_tokens[i]
            seq.generated.append(token)
            reason = self._stream(seq, token)
            if reason is None and seq.cancelled:
                reason = "cancelled"
            if reason is None and cached[i] + 1 >= self.context_length:
                reason = "length"
            if reason is None:
                keep.append(i)
            else:
                ended.append((seq, reason, None))
        batch.keep(keep)
        for seq, reason, error in ended:
            self._finish(seq, reason, error=error)

    def _stream(self, seq: SequenceState, token: int) -> str | None:
        """Emit the text that is certain; return a finish reason when the sequence ends."""
        p = seq.params
        hit_eos = token in self.eos
        ids = seq.generated[:-1] if hit_eos else seq.generated
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        reason = "stop" if hit_eos else ("length" if len(seq.generated) >= p.max_tokens else None)
        for stop in p.stop:
            at = text.find(stop, max(0, seq.emitted_chars - len(stop)))
            if at != -1:
                text, reason = text[:at], "stop"
        if reason is None:
            safe = len(text)
            if text.endswith("\ufffd"):  # a multi-byte character is not complete yet
                safe = len(text.rstrip("\ufffd"))
            for stop in p.stop:  # hold back what may be the start of a stop sequence
                for n in range(min(len(stop) - 1, safe), 0, -1):
                    if text[:safe].endswith(stop[:n]):
                        safe -= n
                        break
            text = text[:safe]
        if len(text) > seq.emitted_chars:
            seq.emit(GenerationEvent(text=text[seq.emitted_chars:], tokens=len(seq.generated)))
            seq.emitted_chars = len(text)
        return reason

    def _finish(self, seq: SequenceState, reason: str, error: str | None = None) -> None:
        if seq.finished:
            return
        seq.finished = True
        seq.emit(GenerationEvent(finished=True, finish_reason=reason, error=error, tokens=len(seq.generated)))


def _cache_kwarg(model: Any) -> str:
    """``cache``, the name transformers 5.24 gave the KV cache argument, where the model takes it;
    ``past_key_values`` (deprecated there, the only name before) otherwise."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _full_attention_only(config: Any) -> bool:
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    types = getattr(text, "layer_types", None)
    if types is not None and any(t != "full_attention" for t in types):
        return False
    return not getattr(text, "sliding_window", None) or not getattr(text, "use_sliding_window", True)

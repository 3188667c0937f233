"""Prefix caching: the keys and values of prompt prefixes kept from earlier requests.

Requests to one model mostly start the same way: the chat template's system
prompt, an application's instructions, the earlier turns of a conversation.
Their keys and values at every layer depend only on those tokens (and the
adapter), so a prompt that starts like an earlier one needs only the rest
computed. That is most of a short prompt's prefill: SmolLM2's template alone
puts 25 tokens before a user's words (measured on CPU: 47 ms to prefill a
38-token prompt, 31 ms with its first 25 tokens cached; 209 and 91 ms for 8
such prompts).

Prefixes are kept in blocks of :data:`BLOCK` tokens, as vLLM does. A block is
found by its adapter, its own tokens and the block before it (exact
comparison, never a hash alone: a collision would hand one request keys
computed from another's text), so any two prompts share the blocks of their
longest common whole-block prefix. Past those, a prompt also takes the first
tokens of a block it shares only in part (the blocks after the same block are
compared token by token), so reuse is exact to the token, as in SGLang's radix
cache, and not rounded down to a block: SmolLM2's template and a short system
prompt end 24 tokens in, and with whole blocks only the last 8 of them were
computed again for every prompt. A prompt's last, partial block is kept too (a
block of fewer tokens), so the next turn of a conversation, which starts with
this turn's whole prompt, finds all of it. A prompt always computes at least
its last token (its logits start the answer). The cache holds at most
``max_tokens`` tokens (``max_tokens // BLOCK`` blocks, partial ones counted
whole) and drops the least recently used blocks first; a chain is touched from
its last block back to its first, so a prefix outlives its continuations.

Everything cached is this server's own: one ModelServing serves one
namespace, and the cache never leaves the process.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

#: Tokens per cached block.
BLOCK = 16

Layers = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values [kv heads, tokens, head dim]


@dataclass
class _Block:
    id: int
    key: tuple[str, int, tuple[int, ...]]  # adapter, the block before (0: none), this block's tokens
    layers: Layers  # this block's tokens (BLOCK, or fewer for a prompt's last block)


class PrefixCache:
    """Blocks of keys and values by (adapter, the block before, the block's tokens); LRU, bounded."""

    def __init__(self, max_tokens: int) -> None:
        self.max_blocks = max(0, max_tokens) // BLOCK
        self._blocks: OrderedDict[tuple[str, int, tuple[int, ...]], _Block] = OrderedDict()
        # (adapter, a block's id): the keys of the blocks held after it, oldest first (a dict, so that of two
        # blocks sharing as much with a prompt the older serves it, in every process alike)
        self._after: dict[tuple[str, int], dict[tuple[str, int, tuple[int, ...]], None]] = {}
        self._next_id = 1
        self.tokens = 0  # tokens held
        self.hit_tokens = 0  # prompt tokens served from the cache, ever

    def _chain(self, adapter: str, prompt: Sequence[int], blocks: int) -> list[_Block]:
        found, parent = [], 0
        for k in range(blocks):
            block = self._blocks.get((adapter, parent, tuple(prompt[k * BLOCK:(k + 1) * BLOCK])))
            if block is None:
                break
            found.append(block)
            parent = block.id
        return found

    def _partial(self, adapter: str, parent: int, tokens: Sequence[int]) -> tuple[int, _Block | None]:
        """Of the blocks held after block ``parent``, the one sharing the most first tokens with ``tokens``."""
        best, most = None, 0
        for key in self._after.get((adapter, parent), ()):
            theirs, n = key[2], 0
            for a, b in zip(theirs, tokens):
                if a != b:
                    break
                n += 1
            if n > most:
                best, most = self._blocks[key], n
        return most, best

    def lookup(self, adapter: str, prompt: Sequence[int]) -> tuple[int, Layers]:
        """The longest cached prefix of ``prompt`` (shorter than the prompt): its length and, per layer, its
        keys and values ``[kv heads, length, head dim]``; ``(0, [])`` when none is cached."""
        whole = self._chain(adapter, prompt, min((len(prompt) - 1) // BLOCK, self.max_blocks))
        start = len(whole) * BLOCK
        part, block = self._partial(adapter, whole[-1].id if whole else 0, prompt[start:len(prompt) - 1])
        pieces = [(b, BLOCK) for b in whole] + ([(block, part)] if block is not None else [])
        for b, _ in reversed(pieces):
            self._blocks.move_to_end(b.key)
        if not pieces:
            return 0, []
        layers = [(torch.cat([b.layers[i][0][:, :n] for b, n in pieces], dim=1),
                   torch.cat([b.layers[i][1][:, :n] for b, n in pieces], dim=1))
                  for i in range(len(pieces[0][0].layers))]
        self.hit_tokens += start + part
        return start + part, layers

    def cacheable(self, prompt: Sequence[int]) -> int:
        """How many of ``prompt``'s first tokens :meth:`store` keeps (all but the last, within the bound)."""
        return min(len(prompt) - 1, self.max_blocks * BLOCK)

    def store(self, adapter: str, prompt: Sequence[int], layers: Layers) -> None:
        """Keep the blocks of ``prompt`` (all but its last token) whose keys and values are ``layers``, per layer
        ``[kv heads, >= cacheable(prompt), head dim]`` for the prompt's first tokens."""
        keep = self.cacheable(prompt)
        chain: list[tuple[str, int, tuple[int, ...]]] = []
        parent = 0
        for start in range(0, keep, BLOCK):
            end = min(start + BLOCK, keep)
            key = (adapter, parent, tuple(prompt[start:end]))
            block = self._blocks.get(key)  # held already
            if block is None:
                block = _Block(self._next_id, key, [(keys[:, start:end].clone(), values[:, start:end].clone())
                                                    for keys, values in layers])
                self._next_id += 1
                self._blocks[key] = block
                self._after.setdefault((adapter, parent), {})[key] = None
                self.tokens += end - start
            parent = block.id
            chain.append(key)
        for key in reversed(chain):  # the chain's first block is the last to go
            self._blocks.move_to_end(key)
        while len(self._blocks) > self.max_blocks:
            key, _ = self._blocks.popitem(last=False)
            self.tokens -= len(key[2])
            after = self._after[(key[0], key[1])]
            del after[key]
            if not after:
                del self._after[(key[0], key[1])]

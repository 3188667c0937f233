"""A Llama-architecture model of a chosen size with random weights, for benchmarks where no hub is reachable.

    python bench/build_model.py --out DIR [--size 1b] [--tokenizer embedded://smollm2-135m-instruct | DIR]
                                [--device cuda] [--dtype bfloat16]

Speed depends on the shapes, not on what the weights learned, so a model of
the right shapes measures a runtime as well as a trained one of that size.
``--size 1b`` is the shape of Llama 3.2 1B (hidden 2048, 16 layers, 32
heads, 8 key/value heads, MLP 8192, tied embeddings) over the tokenizer's
vocabulary (49,152 for SmolLM2's: 1.07B parameters). The folder holds
``config.json``, ``model.safetensors`` and the tokenizer with its chat
template, so ``hone serve --model DIR`` and the benchmarks load it as a
local base model. Answers are gibberish; with greedy decoding they are the
same gibberish on every run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "operator"), str(ROOT / "trainer")]

SIZES = {
    # name: hidden, layers, heads, key/value heads, MLP
    "135m": (576, 30, 9, 3, 1536),
    "1b": (2048, 16, 32, 8, 8192),
    "3b": (3072, 28, 24, 8, 8192),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--size", choices=sorted(SIZES), default="1b")
    parser.add_argument("--tokenizer", default="embedded://smollm2-135m-instruct",
                        help="a model location whose tokenizer to use (embedded://..., or a folder with one)")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--context", type=int, default=8192)
    args = parser.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if args.tokenizer.startswith("embedded://"):
        from hone_trainer import models
        from hone_trainer.contract import ModelSource

        tok = models.load_tokenizer(models.resolve(ModelSource(location=args.tokenizer)))
    else:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    hidden, layers, heads, kv_heads, mlp = SIZES[args.size]
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=args.context, tie_word_embeddings=True, rms_norm_eps=1e-5,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(args.out), safe_serialization=True)
    tok.save_pretrained(str(args.out))
    params = sum(p.numel() for p in model.parameters())
    print(f"{args.out}: Llama {args.size} shape, {params / 1e9:.2f}B parameters, {args.dtype}, random weights")
    return 0


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    sys.exit(main())

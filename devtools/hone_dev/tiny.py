"""A tiny Llama and a byte-level BPE tokenizer with a ChatML template, built locally.

No hub, no committed weights: the tokenizer is trained on a few sentences and
the model has random weights from a small config. Both save and reload with
``from_pretrained(folder)`` like any Hugging Face model.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CORPUS = [
    "Our skateboard wheels come in 52mm, 54mm and 56mm. Harder wheels slide more.",
    "Bearings should be cleaned with isopropyl alcohol and lubricated with speed cream.",
    "Returns are accepted within 30 days with the original receipt.",
    "Hola, ¿cómo puedo ayudarte? Olá, como posso ajudar?",
    "The deck is seven-ply Canadian maple. Grip tape lasts about six months.",
    "system user assistant You are a helpful support assistant for Ollie Shop.",
] * 20


def make_tokenizer(folder: Path, vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|im_start|>",
                                   eos_token="<|im_end|>")
    fast.chat_template = CHATML
    fast.save_pretrained(str(folder))
    return fast


def make_tiny_llama(folder: Path, vocab_size: int = 400, seed: int = 0, context: int = 512):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(folder), safe_serialization=True)
    return model

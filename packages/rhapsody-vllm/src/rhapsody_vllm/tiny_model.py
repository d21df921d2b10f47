"""A tiny real model for smoke tests, benchmarks and examples, built without any download.

A 2-layer Llama (hidden size 128, 2 heads) with seeded random weights, saved by ``transformers``,
and a 512-token byte-level BPE tokenizer trained with ``tokenizers`` on a few KB of seeded
pseudo-words, with a chat template. vLLM serves it like any Hugging Face model directory; greedy
output is gibberish, but the same token ids every run.

The tokenizer's alphabet is printable ASCII plus the byte-level forms of space, newline and tab:
with the full 256-byte alphabet a random model emits lone high bytes that decode to nothing, and
tests of ``stop`` strings need text.
"""

from __future__ import annotations

import random
from pathlib import Path

VOCAB_SIZE = 512
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _training_text(seed: int) -> list[str]:
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfgklmnprstvz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(300)]
    return [
        " ".join(rng.choice(words) for _ in range(12)) + rng.choice(".,!?")
        for _ in range(120)
    ]


def build_tiny_model(directory: str | Path, *, seed: int = 0) -> Path:
    """Write the tiny model and its tokenizer into ``directory`` and return its path.

    Needs ``torch``, ``transformers`` and ``tokenizers`` (all installed with vLLM); takes a few
    seconds and writes about 2 MB.

    Raises:
        ImportError: one of those libraries is missing.
        OSError: ``directory`` cannot be written.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<s>", "</s>", "<pad>", "<unk>"]
    alphabet = [chr(code) for code in range(33, 127)] + ["Ġ", "Ċ", "ĉ"]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, initial_alphabet=alphabet,
        limit_alphabet=len(alphabet), show_progress=False,
    )
    tokenizer.train_from_iterator(_training_text(seed + 7), trainer=trainer)
    if tokenizer.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(
            f"tiny tokenizer has {tokenizer.get_vocab_size()} tokens, expected {VOCAB_SIZE}"
        )
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=bos, eos_token_id=tokenizer.token_to_id("</s>"),
        pad_token_id=tokenizer.token_to_id("<pad>"), tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


if __name__ == "__main__":
    import sys

    print(build_tiny_model(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama"))

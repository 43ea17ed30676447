"""Shared helpers of the data tests: the real-data folder and a tiny word-level tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A file of the shared real-data folder, or skip the test when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


WORDS = ("hello world user assistant how are you fine thanks a b c d e f g h i j k l m n o p q r s t u v w x y z "
         "good bad yes no the cat dog").split()


def word_tokenizer(*, bos: bool = False, chat_template: str | None = None):
    """A whitespace word-level ``PreTrainedTokenizerFast``: ids 0 PAD, 1 UNK, 2 EOS, [3 BOS], then WORDS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "<eos>"] + (["<bos>"] if bos else [])
    vocab = {w: i for i, w in enumerate(special + list(WORDS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = {"bos_token": "<bos>"} if bos else {}
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="<eos>", unk_token="[UNK]",
                                  **kwargs)
    if chat_template is not None:
        out.chat_template = chat_template
    return out


CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def gpt2_tokenizer():
    """The real GPT-2 byte-level BPE from the shared folder (skips when absent), as a ``PreTrainedTokenizerFast``.

    Built through ``tokenizers`` because transformers 5's ``GPT2TokenizerFast(vocab_file=…, merges_file=…)`` comes
    up with an empty vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    folder = shared_file("gpt2-bpe")
    tok = Tokenizer(models.BPE.from_file(str(folder / "encoder.json"), str(folder / "vocab.bpe")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def _m(role: str, content: str) -> dict:
    return {"role": role, "content": content}


#: One small valid record per format of ``mojax.data.formats`` (also the fuzzers' seeds), with the prompt and
#: responses the plain (no chat template) rendering gives.
FORMAT_RECORDS = {
    "pairs": ({"prompt": "how are you", "chosen": "fine thanks", "rejected": "bad"},
              "how are you", ("fine thanks", "bad")),
    "chat": ({"prompt": [_m("user", "how are you")], "chosen": [_m("assistant", "fine thanks")],
              "rejected": [_m("assistant", "bad")]},
             "user: how are you\n\nassistant: ", ("fine thanks", "bad")),
    "hh": ({"chosen": "\n\nHuman: how are you\n\nAssistant: fine thanks",
            "rejected": "\n\nHuman: how are you\n\nAssistant: bad"},
           "\n\nHuman: how are you\n\nAssistant:", (" fine thanks", " bad")),
    "pku": ({"prompt": "how are you", "response_0": "bad", "response_1": "fine thanks", "better_response_id": 1,
             "safer_response_id": 1}, "how are you", ("fine thanks", "bad")),
    "listwise": ({"prompt": "how are you", "responses": ["fine thanks", "bad", "no"], "labels": [2, 0, 1]},
                 "how are you", ("fine thanks", "bad", "no")),
    "sharegpt": ({"conversations": [{"from": "human", "value": "how are you"}],
                  "chosen": {"from": "gpt", "value": "fine thanks"}, "rejected": {"from": "gpt", "value": "bad"}},
                 "user: how are you\n\nassistant: ", ("fine thanks", "bad")),
    "alpaca": ({"instruction": "how are you", "input": "the cat", "chosen": "fine thanks", "rejected": "bad"},
               "user: how are you\nthe cat\n\nassistant: ", ("fine thanks", "bad")),
    "ultrafeedback": ({"instruction": "how are you",
                       "completions": [{"response": "bad", "fine-grained_score": 2.5},
                                       {"response": "fine thanks", "fine-grained_score": 4.75},
                                       {"response": "no", "fine-grained_score": 1.0}]},
                      "user: how are you\n\nassistant: ", None),  # rejected: "bad" or "no", seeded
    "openai": ({"input": {"messages": [_m("user", "how are you")]},
                "preferred_output": [_m("assistant", "fine thanks")],
                "non_preferred_output": [_m("assistant", "bad")]},
               "user: how are you\n\nassistant: ", ("fine thanks", "bad")),
    "tokenized": ({"prompt_ids": [3, 10], "response_ids": [[11, 2], [12, 2]]}, None, None),
}

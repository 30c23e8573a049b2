"""A tiny random XLM-R and a word-level tokenizer, built in memory (no hub, no download)."""

from __future__ import annotations

import torch

WORDS = "the a cat dog sat on mat big small red house tree".split()


def tiny_encoder(layers: int = 4, head: str | None = None):
    """A WordLevel tokenizer with XLM-R's specials and a random XLM-R (``XLMRobertaModel``, or
    ``XLMRobertaForMaskedLM`` with ``head="mlm"``), 32 hidden, 64 positions."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, XLMRobertaConfig, XLMRobertaForMaskedLM, XLMRobertaModel

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    specials = dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
                    mask_token="<mask>", cls_token="<s>", sep_token="</s>")  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **specials)
    torch.manual_seed(0)
    config = XLMRobertaConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=1,
    )  # fmt: skip
    model = XLMRobertaForMaskedLM(config) if head == "mlm" else XLMRobertaModel(config)
    return model.eval(), tokenizer

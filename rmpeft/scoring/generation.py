"""Greedy generation for the generation tasks (SQuAD, DROP)."""

from __future__ import annotations

import torch
from torch import nn

from rmpeft.scoring.batch import _ids, pad_id


@torch.no_grad()
def generate_answers(model: nn.Module, tokenizer, prompts: list[str], max_length: int, max_new_tokens: int,
                     device: torch.device) -> list[str]:
    """Greedy decoding from each prompt (left-padded batch); the answer stops at the first newline."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    seqs = [bos + _ids(tokenizer, p)[-max(max_length - max_new_tokens - len(bos), 1):] for p in prompts]
    width = max(len(s) for s in seqs)
    pad = pad_id(tokenizer)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for i, s in enumerate(seqs):
        input_ids[i, width - len(s):] = torch.tensor(s)
        attention[i, width - len(s):] = 1
    out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
    texts = tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return [t.split("\n")[0].strip() for t in texts]

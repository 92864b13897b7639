"""Examples as token batches: every candidate as a flat ``prompt + candidate`` row, and the same
rows as shared prompts plus candidate continuations.

A :class:`Batch` carries both layouts. The flat one (``input_ids`` ...) is one right-padded row per
candidate, the prompt repeated in each. The shared one (``prompt_ids`` ...) holds each distinct
prompt once (right-padded) and each candidate's tokens in its own row (``cand_ids``), with
``group[r]`` naming the prompt row that candidate row ``r`` continues. Both give the same
candidate log-probabilities; :mod:`rmpeft.scoring.paths` picks which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rmpeft.data.example import Example

TokenRow = tuple[list[int], int]   # token ids of ``<bos> prompt candidate`` and the candidate's start


@dataclass
class Batch:
    """Candidate sequences of several examples, flattened: row r belongs to example ``owner[r]``."""

    input_ids: torch.Tensor         # (R, L) right-padded
    attention_mask: torch.Tensor    # (R, L)
    option_mask: torch.Tensor       # (R, L) 1 where the token is a candidate token (a prediction target)
    owner: torch.Tensor             # (R,) example index within the batch
    gold: torch.Tensor              # (E,) gold candidate per example
    num_candidates: list[int]       # per example
    prompt_ids: torch.Tensor | None = None    # (G, P) distinct ``<bos> prompt`` sequences, right-padded
    prompt_mask: torch.Tensor | None = None   # (G, P)
    cand_ids: torch.Tensor | None = None      # (R, C) candidate tokens, right-padded
    cand_mask: torch.Tensor | None = None     # (R, C)
    group: torch.Tensor | None = None         # (R,) prompt row of each candidate row

    def to(self, device: torch.device) -> "Batch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return Batch(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in moved.items()})

    @property
    def num_tokens(self) -> int:
        """Candidate rows x padded length: the size of the flat layout (what token budgets bound)."""
        return int(self.input_ids.numel())

    @property
    def has_shared_layout(self) -> bool:
        return self.cand_ids is not None

    def example_sizes(self) -> list[tuple[int, int]]:
        """Per example: its candidate rows and its longest row (tokens)."""
        lengths = self.attention_mask.sum(-1).tolist()
        out, start = [], 0
        for n in self.num_candidates:
            out.append((n, int(max(lengths[start: start + n], default=0))))
            start += n
        return out

    def select(self, examples: list[int]) -> "Batch":
        """The batch of ``examples`` (ascending indices) alone: their rows, prompts and gold indices,
        padding cut to their own longest row (right padding: the scored tokens do not change)."""
        idx = torch.tensor(examples, dtype=torch.long, device=self.owner.device)
        remap = torch.full((len(self.num_candidates),), -1, dtype=torch.long, device=self.owner.device)
        remap[idx] = torch.arange(len(examples), device=self.owner.device)
        rows = remap[self.owner] >= 0

        def trim(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            width = int(mask.sum(-1).max()) if mask.numel() else 0
            return ids[:, :width], mask[:, :width]

        input_ids, attention = trim(self.input_ids[rows], self.attention_mask[rows])
        shared: dict[str, torch.Tensor | None] = {}
        if self.has_shared_layout:
            assert self.prompt_ids is not None and self.prompt_mask is not None and self.cand_mask is not None
            assert self.cand_ids is not None and self.group is not None
            used = torch.unique(self.group[rows])   # sorted: groups keep their order
            gmap = torch.full((self.prompt_ids.size(0),), -1, dtype=torch.long, device=used.device)
            gmap[used] = torch.arange(used.numel(), device=used.device)
            prompt_ids, prompt_mask = trim(self.prompt_ids[used], self.prompt_mask[used])
            cand_ids, cand_mask = trim(self.cand_ids[rows], self.cand_mask[rows])
            shared = dict(prompt_ids=prompt_ids, prompt_mask=prompt_mask, cand_ids=cand_ids, cand_mask=cand_mask,
                          group=gmap[self.group[rows]])
        return Batch(input_ids, attention, self.option_mask[rows][:, : input_ids.size(1)], remap[self.owner[rows]],
                     self.gold[idx], [self.num_candidates[i] for i in examples], **shared)


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_candidate(tokenizer, prompt: str, candidate: str, max_length: int) -> TokenRow:
    """Token ids of ``<bos> prompt candidate`` and the index where the candidate starts.

    Over-long inputs are truncated from the left (the candidate is always kept whole).
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    p, c = _ids(tokenizer, prompt), _ids(tokenizer, candidate)
    if not c:
        raise ValueError(f"candidate {candidate!r} encodes to no tokens")
    keep = max(max_length - len(c) - len(bos), 1)
    p = p[-keep:]
    ids = bos + p + c
    return ids, len(bos) + len(p)


def encode_example(example: Example, tokenizer, max_length: int, candidates: str = "all") -> list[TokenRow]:
    """The rows of one example: every candidate (``"all"``) or only the gold one (``"gold"``)."""
    cands = [example.candidates[example.gold]] if candidates == "gold" else example.candidates
    return [encode_candidate(tokenizer, example.prompt, c, max_length) for c in cands]


def flat_tokens(rows: list[list[TokenRow]]) -> int:
    """Size of the flat layout of these examples' rows: row count x longest row."""
    flat = [ids for ex in rows for ids, _ in ex]
    return len(flat) * max((len(ids) for ids in flat), default=0)


def token_chunks(rows: list[list[TokenRow]], max_tokens: int | None) -> list[list[int]]:
    """Consecutive example indices grouped so that each group's flat layout holds at most
    ``max_tokens`` tokens (an example larger than that alone forms a group); None: one group."""
    return size_chunks([(len(ex), max((len(ids) for ids, _ in ex), default=0)) for ex in rows], max_tokens)


def size_chunks(sizes: list[tuple[int, int]], max_tokens: int | None) -> list[list[int]]:
    """:func:`token_chunks` from each example's (candidate rows, longest row)."""
    if not max_tokens:
        return [list(range(len(sizes)))] if sizes else []
    out: list[list[int]] = []
    current: list[int] = []
    rows_n, width = 0, 0
    for i, (n, w) in enumerate(sizes):
        if current and (rows_n + n) * max(width, w) > max_tokens:
            out.append(current)
            current, rows_n, width = [], 0, 0
        current.append(i)
        rows_n, width = rows_n + n, max(width, w)
    if current:
        out.append(current)
    return out


def _right_padded(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids, mask


def collate_rows(rows: list[list[TokenRow]], gold: list[int], pad: int) -> Batch:
    """One :class:`Batch` (both layouts) of already encoded examples."""
    flat = [row for ex in rows for row in ex]
    owner = [i for i, ex in enumerate(rows) for _ in ex]
    input_ids, attention = _right_padded([ids for ids, _ in flat], pad)
    option = torch.zeros_like(attention)
    for r, (ids, start) in enumerate(flat):
        option[r, start: len(ids)] = 1
    # Shared layout: candidates of one example whose (truncated) prompts are equal share one prompt row.
    prompts: dict[tuple[int, tuple[int, ...]], int] = {}
    group = []
    for (ids, start), who in zip(flat, owner):
        key = (who, tuple(ids[:start]))
        group.append(prompts.setdefault(key, len(prompts)))
    prompt_ids, prompt_mask = _right_padded([list(k[1]) for k in prompts], pad)
    cand_ids, cand_mask = _right_padded([ids[start:] for ids, start in flat], pad)
    return Batch(input_ids, attention, option, torch.tensor(owner), torch.tensor(gold, dtype=torch.long),
                 [len(ex) for ex in rows], prompt_ids, prompt_mask, cand_ids, cand_mask, torch.tensor(group))


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def collate(examples: list[Example], tokenizer, max_length: int, candidates: str = "all") -> Batch:
    """Encode examples into one batch of candidate sequences.

    ``candidates="all"`` scores every candidate (classification, multiple choice);
    ``candidates="gold"`` keeps only the gold one (the LM-loss target of generation tasks).
    """
    rows = [encode_example(ex, tokenizer, max_length, candidates) for ex in examples]
    gold = [0 if candidates == "gold" else ex.gold for ex in examples]
    return collate_rows(rows, gold, pad_id(tokenizer))

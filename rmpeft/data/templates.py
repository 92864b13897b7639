"""MeZO's prompt templates and verbalizers (Malladi et al., 2023, ``large_models/templates.py``),
reimplemented on the raw records of :mod:`rmpeft.data.readers` (one function per task; the task
registry :mod:`rmpeft.data.tasks` names each task's template).

An :class:`Example` splits MeZO's verbalized text ``template.verbalize(x, c)`` into the prompt
``template.encode(x)`` and the continuation that the candidate adds. MeZO strips spaces around the
prompt before tokenising, so a space that joins prompt and candidate belongs to the candidate
(SST-2 ``"... It was"`` + ``" great"``; COPA ``"... because"`` + ``" the sun was rising."``).

Generation tasks (SQuAD, DROP) train on MeZO's gold continuation ``" <answer>\\n"`` (the newline is
where greedy decoding stops) and are scored against every gold answer.
"""

from __future__ import annotations

from typing import Any

from rmpeft.data.example import Example

Raw = dict[str, Any]


def _example(prompt: str, candidates: list[str], gold: int, **kw: Any) -> Example:
    # MeZO: `encode(x).strip(' ')` and `verbalize(x, c).strip(' ')`.
    return Example(prompt=prompt.strip(" "), candidates=[c.rstrip(" ") for c in candidates], gold=gold, **kw)


def _yes_no(prompt: str, label: int, no_first: bool) -> Example:
    """Yes/No verbalizer of a true(1)/false(0) label; ``no_first`` orders the candidates as MeZO's
    verbalizer {0: No, 1: Yes}, otherwise ["Yes", "No"] (BoolQ)."""
    if no_first:
        return _example(prompt, ["No", "Yes"], label)
    return _example(prompt, ["Yes", "No"], 0 if label else 1)


def sst2(r: Raw) -> Example:
    return _example(f"{r['sentence'].strip()} It was", [" terrible", " great"], r["label"])


def rte(r: Raw) -> Example:
    # verbalizer {0: Yes, 1: No}; label 0 = entailment.
    prompt = f"{r['premise']}\nDoes this mean that \"{r['hypothesis']}\" is true? Yes or No?\n"
    return _example(prompt, ["Yes", "No"], r["label"])


def cb(r: Raw) -> Example:
    # verbalizer {0: Yes, 1: No, 2: Maybe}; labels entailment, contradiction, neutral.
    prompt = f"Suppose {r['premise']} Can we infer that \"{r['hypothesis']}\"? Yes, No, or Maybe?\n"
    return _example(prompt, ["Yes", "No", "Maybe"], r["label"])


def boolq(r: Raw) -> Example:
    # MeZO's default BoolQ template (version 2, "BoolQTemplateV3"): candidates "Yes" (true) / "No".
    question = r["question"] if r["question"].endswith("?") else r["question"] + "?"
    question = question[:1].upper() + question[1:]
    return _yes_no(f"{r['passage']} {question}\n", r["label"], no_first=False)


def wsc(r: Raw) -> Example:
    prompt = (f"{r['text']}\nIn the previous sentence, does the pronoun \"{r['span2_text'].lower()}\" "
              f"refer to {r['span1_text']}? Yes or No?\n")
    return _yes_no(prompt, r["label"], no_first=True)


def wic(r: Raw) -> Example:
    prompt = (f"Does the word \"{r['word']}\" have the same meaning in these two sentences? Yes, No?\n"
              f"{r['sentence1']}\n{r['sentence2']}\n")
    return _yes_no(prompt, r["label"], no_first=True)


def multirc(r: Raw) -> Example:
    prompt = (f"{r['paragraph']}\nQuestion: {r['question']}\n"
              f"I found this answer \"{r['answer']}\". Is that correct? Yes or No?\n")
    return _yes_no(prompt, r["label"], no_first=True)


def _copa_alternative(choice: str) -> str:
    """MeZO's "correct" capitalisation: lower-case the first word unless it is "I"."""
    words = choice.split(" ")
    if words[0] != "I":
        words[0] = words[0].lower()
    return " ".join(words)


def copa(r: Raw) -> Example:
    premise = r["premise"].rstrip()
    premise = premise[:-1] if premise.endswith(".") else premise
    conjunction = " because " if r["question"] == "cause" else " so "
    candidates = [" " + _copa_alternative(r["choice1"]), " " + _copa_alternative(r["choice2"])]
    return _example(premise + conjunction, candidates, r["label"])


def record(r: Raw) -> Example:
    # MeZO's ReCoRD template ("ReCoRDTemplateGPT3"): highlights become "- " bullets and each candidate
    # is the query with @placeholder replaced by one entity. Any gold entity counts as correct.
    passage = r["passage"].replace("@highlight\n", "- ")
    entities = list(r["entities"])
    for answer in r["answers"]:
        if answer not in entities:  # a gold answer whose span is not tagged as an entity
            entities.append(answer)
    candidates = [" " + r["query"].replace("@placeholder", e) for e in entities]
    gold_set = [entities.index(a) for a in r["answers"]]
    return _example(f"{passage}\n-", candidates, gold_set[0], meta={"gold_set": gold_set})


def squad(r: Raw) -> Example:
    prompt = f"Title: {r['title']}\nContext: {r['context']}\nQuestion: {r['question'].strip()}\nAnswer:"
    answers = list(r["answers"])
    return Example(prompt=prompt.strip(" "), candidates=[f" {answers[0]}\n"], gold=0, answers=answers)


def drop(r: Raw) -> Example:
    prompt = f"Passage: {r['passage']}\nQuestion: {r['question'].strip()}\nAnswer:"
    answers = list(r["answers"])
    return Example(prompt=prompt.strip(" "), candidates=[f" {answers[0]}\n"], gold=0, answers=answers)


def synthetic(r: Raw) -> Example:
    # Same verbalizer as SST-2; the sentiment is given away by the cue word (see rmpeft.data.synthetic).
    return _example(f"{r['cue']}. It was", [" terrible", " great"], r["label"])

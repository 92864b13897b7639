"""Readers of raw task records: the official files and the Hugging Face Hub's rows.

Both produce the same *raw records* (plain dicts), one per example the paper counts, in the
order of the source split. The field names follow the Hub's SuperGLUE/GLUE/SQuAD/DROP columns, and
labels are the Hub's class indices:

=========  =====================================================================================
task       raw record
=========  =====================================================================================
sst2       sentence; label (0 negative, 1 positive)
rte        premise, hypothesis; label (0 entailment, 1 not_entailment)
cb         premise, hypothesis; label (0 entailment, 1 contradiction, 2 neutral)
boolq      question, passage; label (0 false, 1 true)
wsc        text, span1_text, span2_text; label (0 false, 1 true)  -- spans fixed as in ``wsc.fixed``
wic        word, sentence1, sentence2; label (0 false, 1 true)
multirc    paragraph, question, answer; label (0 false, 1 true)  -- one record per answer option
copa       premise, choice1, choice2, question ('cause' | 'effect'); label (0 choice1, 1 choice2)
record     passage, query, entities (sorted, unique), answers (sorted, unique)  -- one per query
squad      title, context, question, answers (all gold answers, in order)
drop       passage, question, answers (the Hub's ``answers_spans.spans``)
=========  =====================================================================================

Local files are flattened exactly as the Hub's conversion scripts did (same record order), so a data
seed selects the same examples from either source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmpeft.data.formats import (
    DataFileError,
    field,
    read_json,
    read_jsonl,
    read_tsv,
    where,
)

log = logging.getLogger(__name__)

Raw = dict[str, Any]

# Label names of the official files, in the order of the Hub's class indices.
RTE_LABELS = ("entailment", "not_entailment")
CB_LABELS = ("entailment", "contradiction", "neutral")


# --------------------------------------------------------------------------------------------------
# Local official files
# --------------------------------------------------------------------------------------------------

def _label_name(obj: dict, names: tuple[str, ...], path: Path, line: int) -> int:
    value = field(obj, "label", path, line)
    if value not in names:
        raise DataFileError(f"{where(path, line)}: unknown label '{value}'; valid labels: {', '.join(names)}")
    return names.index(value)


def _label_binary(obj: dict, key: str, path: Path, line: int, item: str = "") -> int:
    """A true/false label stored as a JSON boolean or as 0/1."""
    value = field(obj, key, path, line, (bool, int), item)
    if value not in (0, 1):
        raise DataFileError(f"{where(path, line)}: label '{value}' should be true/false or 0/1")
    return int(value)


def fix_wsc_span(text: str, span: str, index: int) -> str:
    """Repair a WSC span that is not a substring of the text, as the Hub's ``wsc.fixed`` config does:
    match the case of the word at ``index``, drop a trailing period, replace newlines by spaces."""
    if span in text or not span:
        return span
    words = text.split()
    if 0 <= index < len(words):
        first = words[index]
        span = (span[0].lower() if first[:1].islower() else span[0].upper()) + span[1:]
    return span.rstrip(".").replace("\n", " ")


def read_sst2(path: Path) -> list[Raw]:
    out = []
    for line, row in read_tsv(path, ("sentence", "label")):
        if row["label"] not in ("0", "1"):
            raise DataFileError(f"{where(path, line)}: label '{row['label']}' should be 0 or 1")
        out.append({"sentence": row["sentence"], "label": int(row["label"])})
    return out


def read_rte(path: Path) -> list[Raw]:
    return [{"premise": field(o, "premise", path, n), "hypothesis": field(o, "hypothesis", path, n),
             "label": _label_name(o, RTE_LABELS, path, n)} for n, o in read_jsonl(path)]


def read_cb(path: Path) -> list[Raw]:
    return [{"premise": field(o, "premise", path, n), "hypothesis": field(o, "hypothesis", path, n),
             "label": _label_name(o, CB_LABELS, path, n)} for n, o in read_jsonl(path)]


def read_boolq(path: Path) -> list[Raw]:
    return [{"question": field(o, "question", path, n), "passage": field(o, "passage", path, n),
             "label": _label_binary(o, "label", path, n)} for n, o in read_jsonl(path)]


def read_wsc(path: Path) -> list[Raw]:
    out = []
    for n, o in read_jsonl(path):
        text = field(o, "text", path, n)
        target = field(o, "target", path, n, dict)
        spans = {}
        for k in ("span1", "span2"):
            span = field(target, f"{k}_text", path, n, item="target")
            index = field(target, f"{k}_index", path, n, int, item="target")
            spans[f"{k}_text"] = fix_wsc_span(text, span, index)
        out.append({"text": text, **spans, "label": _label_binary(o, "label", path, n)})
    return out


def read_wic(path: Path) -> list[Raw]:
    return [{"word": field(o, "word", path, n), "sentence1": field(o, "sentence1", path, n),
             "sentence2": field(o, "sentence2", path, n), "label": _label_binary(o, "label", path, n)}
            for n, o in read_jsonl(path)]


def read_multirc(path: Path) -> list[Raw]:
    out = []
    for n, o in read_jsonl(path):
        passage = field(o, "passage", path, n, dict)
        text = field(passage, "text", path, n, item="passage")
        for qi, q in enumerate(field(passage, "questions", path, n, list, item="passage")):
            item = f"question {qi}"
            question = field(q, "question", path, n, item=item)
            for ai, a in enumerate(field(q, "answers", path, n, list, item=item)):
                out.append({"paragraph": text, "question": question,
                            "answer": field(a, "text", path, n, item=f"{item}, answer {ai}"),
                            "label": _label_binary(a, "label", path, n, f"{item}, answer {ai}")})
    return out


def read_copa(path: Path) -> list[Raw]:
    out = []
    for n, o in read_jsonl(path):
        question = field(o, "question", path, n)
        if question not in ("cause", "effect"):
            raise DataFileError(f"{where(path, n)}: question '{question}' should be 'cause' or 'effect'")
        out.append({"premise": field(o, "premise", path, n), "choice1": field(o, "choice1", path, n),
                    "choice2": field(o, "choice2", path, n), "question": question,
                    "label": _label_binary(o, "label", path, n)})
    return out


def read_record_task(path: Path) -> list[Raw]:
    """ReCoRD (the task, not a run record): one raw example per query, with the passage's entities."""
    out = []
    for n, o in read_jsonl(path):
        passage = field(o, "passage", path, n, dict)
        text = field(passage, "text", path, n, item="passage")
        entities = set()
        for e in field(passage, "entities", path, n, list, item="passage"):
            # Official spans are inclusive of `end`.
            entities.add(text[field(e, "start", path, n, int, "entity"): field(e, "end", path, n, int, "entity") + 1])
        for qi, qa in enumerate(field(o, "qas", path, n, list)):
            item = f"query {qi}"
            answers = {field(a, "text", path, n, item=item) for a in field(qa, "answers", path, n, list, item)}
            if not answers:
                raise DataFileError(f"{where(path, n)} ({item}): no answers")
            out.append({"passage": text, "query": field(qa, "query", path, n, item=item),
                        "entities": sorted(entities), "answers": sorted(answers)})
    return out


def read_squad(path: Path) -> list[Raw]:
    doc = read_json(path)
    out, skipped = [], 0
    for ai, article in enumerate(field(doc, "data", path, kind=list)):
        title = field(article, "title", path, item=f"data[{ai}]")
        for pi, para in enumerate(field(article, "paragraphs", path, kind=list, item=f"data[{ai}]")):
            item = f"data[{ai}].paragraphs[{pi}]"
            context = field(para, "context", path, item=item)
            for qi, qa in enumerate(field(para, "qas", path, kind=list, item=item)):
                qitem = f"{item}.qas[{qi}]"
                gold = field(qa, "answers", path, kind=list, item=qitem)
                answers = [field(a, "text", path, item=qitem) for a in gold]
                if not answers:
                    skipped += 1
                    continue
                out.append({"title": title, "context": context, "question": field(qa, "question", path, item=qitem),
                            "answers": answers})
    if skipped:
        log.warning("%s: skipped %d questions without answers", path, skipped)
    return out


def drop_answer_strings(answers: list[dict]) -> list[str] | None:
    """Gold strings of DROP answer objects, as the Hub's ``answers_spans.spans``: a number, a date
    ('day month year', blanks dropped) or each span. None when an answer mixes kinds or none is given
    (the Hub's conversion skipped those questions: 9 in train, 1 in dev)."""
    out = []
    for a in answers:
        number = str(a.get("number", "") or "")
        date_obj = a.get("date") or {}
        date = " ".join(str(date_obj.get(k, "") or "") for k in ("day", "month", "year")).strip()
        spans = [str(s) for s in a.get("spans", []) or []]
        if sum(bool(x) for x in (number, date, spans)) > 1:
            return None
        out += [number] if number else [date] if date else spans
    return out or None


def read_drop(path: Path, gold_key: str) -> list[Raw]:
    """DROP questions; gold answers from ``answer`` (train) or ``validated_answers`` (dev), as the Hub."""
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise DataFileError(f"{path}: expected a JSON object of passages")
    out, skipped = [], 0
    for section_id, section in doc.items():
        passage = field(section, "passage", path, item=section_id)
        for qi, qa in enumerate(field(section, "qa_pairs", path, kind=list, item=section_id)):
            item = f"{section_id}.qa_pairs[{qi}]"
            question = field(qa, "question", path, item=item)
            gold = qa.get(gold_key)
            gold = [gold] if isinstance(gold, dict) else gold if isinstance(gold, list) else []
            answers = drop_answer_strings(gold)
            if answers is None:
                skipped += 1
                continue
            out.append({"passage": passage, "question": question, "answers": answers})
    if skipped:
        log.info("%s: skipped %d questions without a usable answer", path, skipped)
    return out


def read_drop_split(path: Path, role: str) -> list[Raw]:
    """DROP questions of the file serving ``role``: ``train`` reads ``answer``, ``test`` the dev
    file's ``validated_answers`` (as the Hub's conversion)."""
    return read_drop(path, "answer" if role == "train" else "validated_answers")


# --------------------------------------------------------------------------------------------------
# Hugging Face Hub rows (the same raw records from the Hub's columns)
# --------------------------------------------------------------------------------------------------

def pick(*keys: str, label: bool = True) -> Callable[[dict], Raw]:
    """A Hub row mapper that keeps ``keys`` and, with ``label``, the integer ``label``."""
    def mapper(row: dict) -> Raw:
        out = {k: row[k] for k in keys}
        if label:
            out["label"] = int(row["label"])
        return out
    return mapper


def hub_copa(r: dict) -> Raw:
    return {**pick("premise", "choice1", "choice2")(r), "question": r["question"], "label": int(r["label"])}


def hub_record(r: dict) -> Raw:
    return {"passage": r["passage"], "query": r["query"],
            "entities": sorted(set(r["entities"])), "answers": sorted(set(r["answers"]))}


def hub_squad(r: dict) -> Raw:
    return {"title": r["title"], "context": r["context"], "question": r["question"],
            "answers": list(r["answers"]["text"])}


def hub_drop(r: dict) -> Raw:
    return {"passage": r["passage"], "question": r["question"], "answers": list(r["answers_spans"]["spans"])}

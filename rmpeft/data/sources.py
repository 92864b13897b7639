"""Raw task records from the Hugging Face Hub or from local files in the official formats.

Both sources produce the same *raw records* (plain dicts), one per example the paper counts, in the
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rmpeft.data.formats import (
    DataFileError,
    field,
    read_json,
    read_jsonl,
    read_tsv,
    require_file,
    where,
)
from rmpeft.errors import RmpeftError

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


def read_record(path: Path) -> list[Raw]:
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


# task name -> (reader of one official file, given the file's role: "train" or "test")
LOCAL_READERS: dict[str, Callable[[Path, str], list[Raw]]] = {
    "sst2": lambda p, role: read_sst2(p),
    "rte": lambda p, role: read_rte(p),
    "cb": lambda p, role: read_cb(p),
    "boolq": lambda p, role: read_boolq(p),
    "wsc": lambda p, role: read_wsc(p),
    "wic": lambda p, role: read_wic(p),
    "multirc": lambda p, role: read_multirc(p),
    "copa": lambda p, role: read_copa(p),
    "record": lambda p, role: read_record(p),
    "squad": lambda p, role: read_squad(p),
    "drop": lambda p, role: read_drop(p, "answer" if role == "train" else "validated_answers"),
}


def read_local_file(task: str, path: str | Path, role: str = "train") -> list[Raw]:
    """Raw records of one official file of ``task``; ``role`` is the split it serves (train/test)."""
    return LOCAL_READERS[task](Path(path), role)


# --------------------------------------------------------------------------------------------------
# Hugging Face Hub
# --------------------------------------------------------------------------------------------------

def _pick(*keys: str, label: bool = True) -> Callable[[dict], Raw]:
    def mapper(row: dict) -> Raw:
        out = {k: row[k] for k in keys}
        if label:
            out["label"] = int(row["label"])
        return out
    return mapper


HUB_MAPPERS: dict[str, Callable[[dict], Raw]] = {
    "sst2": _pick("sentence"),
    "rte": _pick("premise", "hypothesis"),
    "cb": _pick("premise", "hypothesis"),
    "boolq": _pick("question", "passage"),
    "wsc": _pick("text", "span1_text", "span2_text"),
    "wic": _pick("word", "sentence1", "sentence2"),
    "multirc": _pick("paragraph", "question", "answer"),
    "copa": lambda r: {**_pick("premise", "choice1", "choice2")(r),
                       "question": r["question"], "label": int(r["label"])},
    "record": lambda r: {"passage": r["passage"], "query": r["query"],
                         "entities": sorted(set(r["entities"])), "answers": sorted(set(r["answers"]))},
    "squad": lambda r: {"title": r["title"], "context": r["context"], "question": r["question"],
                        "answers": list(r["answers"]["text"])},
    "drop": lambda r: {"passage": r["passage"], "question": r["question"],
                       "answers": list(r["answers_spans"]["spans"])},
}


class MappedRows(Sequence):
    """A Hub split seen through a row mapper, converted on access (only sampled rows are touched)."""

    def __init__(self, rows: Sequence[dict], mapper: Callable[[dict], Raw], origin: str):
        self.rows, self.mapper, self.origin = rows, mapper, origin

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        row = self.rows[int(i)]
        try:
            return self.mapper(row)
        except (KeyError, TypeError) as e:
            raise RmpeftError(f"{self.origin}: row {i} does not have the expected fields ({e}); "
                              f"found: {', '.join(sorted(row))}") from None

    def __iter__(self) -> Iterator[Raw]:
        return (self[i] for i in range(len(self)))


def hub_rows(task: str, rows: Sequence[dict], origin: str = "hub") -> MappedRows:
    """Raw records of a Hub split (any sequence of row dicts, e.g. a ``datasets.Dataset``)."""
    return MappedRows(rows, HUB_MAPPERS[task], origin)


# --------------------------------------------------------------------------------------------------
# Choosing the source
# --------------------------------------------------------------------------------------------------

def load_local(task: str, data_dir: str | Path, files: Any) -> dict[str, list[Raw]]:
    """``{"train": ..., "test": ...}`` raw records from ``data_dir`` (``files.train``, ``files.test``)."""
    folder = Path(str(data_dir)).expanduser()
    if not folder.is_dir():
        raise DataFileError(f"task.data_dir '{data_dir}' is not a folder")
    out = {}
    for role in ("train", "test"):
        name = files.get(role) if files is not None else None
        if not name:
            raise RmpeftError(f"task.files.{role} is not set (the file name inside task.data_dir)")
        path = require_file(folder / str(name), f"task.files.{role} in task.data_dir={data_dir}")
        out[role] = read_local_file(task, path, role)
        log.info("read %d %s records from %s", len(out[role]), task, path)
    return out


def load_hub(task: str, source: Any) -> dict[str, Sequence[Raw]]:
    """``{"train": ..., "test": ...}`` raw records via ``datasets.load_dataset`` (downloads on first use)."""
    from datasets import load_dataset

    if source is None or not source.get("path"):
        raise RmpeftError(f"task '{task}' has neither task.data_dir nor task.source.path")
    path, name, revision = source.get("path"), source.get("name"), source.get("revision")
    out: dict[str, Sequence[Raw]] = {}
    for role, key in (("train", "train_split"), ("test", "test_split")):
        split = source.get(key) or role
        origin = f"{path}" + (f"/{name}" if name else "") + f" [{split}]"
        try:
            rows = load_dataset(path, name, revision=revision, split=split)
        except Exception as e:  # datasets raises many types; report one line with the source named
            reason = f"{type(e).__name__}: {e}".splitlines()[0]
            raise RmpeftError(f"could not load {origin} from the Hugging Face Hub "
                              f"(task.source, revision={revision or 'main'}): {reason}") from e
        out[role] = hub_rows(task, rows, origin)
    return out


def load_raw(task_cfg: Any) -> dict[str, Sequence[Raw]]:
    """Raw train and test pools of a task config: local files when ``data_dir`` is set, else the Hub."""
    task = str(task_cfg.get("name"))
    data_dir = task_cfg.get("data_dir")
    if data_dir:
        return load_local(task, data_dir, task_cfg.get("files"))
    return load_hub(task, task_cfg.get("source"))

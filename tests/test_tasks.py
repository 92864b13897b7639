"""Tasks: official-format fixtures render to MeZO's exact prompts and candidates, the Hub's field names
map onto the same raw records, the split protocol, and the bad-input messages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from rmpeft.data import KINDS, TASK_NAMES, TASK_ORDER, Example, load_splits
from rmpeft.data.formats import DataFileError
from rmpeft.data.loading import render
from rmpeft.data.sampling import plan_splits
from rmpeft.data.sources import hub_rows, load_hub
from rmpeft.errors import RmpeftError
from rmpeft.data.tasks import IMAGE_TASKS, task_label
from rmpeft.vision.classes import CLASS_SPECS
from tests.helpers import read_local_file

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tasks"
# task -> (fixture folder, train file, validation file)
LAYOUT = {
    "sst2": ("SST-2", "train.tsv", "dev.tsv"),
    "rte": ("RTE", "train.jsonl", "val.jsonl"),
    "cb": ("CB", "train.jsonl", "val.jsonl"),
    "boolq": ("BoolQ", "train.jsonl", "val.jsonl"),
    "wsc": ("WSC", "train.jsonl", "val.jsonl"),
    "wic": ("WiC", "train.jsonl", "val.jsonl"),
    "multirc": ("MultiRC", "train.jsonl", "val.jsonl"),
    "copa": ("COPA", "train.jsonl", "val.jsonl"),
    "record": ("ReCoRD", "train.jsonl", "val.jsonl"),
    "squad": ("SQuAD", "train-v1.1.json", "dev-v1.1.json"),
    "drop": ("DROP", "drop_dataset_train.json", "drop_dataset_dev.json"),
}


def task_cfg(name: str, **overrides):
    """A task config from conf/task/<name>.yaml with overrides (e.g. data_dir)."""
    cfg = OmegaConf.load(REPO / "conf" / "task" / f"{name}.yaml")
    return OmegaConf.merge(cfg, overrides)


def fixture_examples(task: str, role: str = "train") -> list[Example]:
    folder, train, val = LAYOUT[task]
    path = FIXTURES / folder / (train if role == "train" else val)
    return [render(task, r) for r in read_local_file(task, path, role)]


# --------------------------------------------------------------------------------------------------
# Templates: each fixture renders to the exact expected strings (hand-written from MeZO's templates)
# --------------------------------------------------------------------------------------------------

EXPECTED = {
    "sst2": [
        ("a gentle , funny little film It was", [" terrible", " great"], 1),
        ("the plot goes nowhere It was", [" terrible", " great"], 0),
        ('sharp and "sweet" at once It was', [" terrible", " great"], 1),
    ],
    "rte": [
        ('The bridge over the river was opened in 1932 by the mayor.\n'
         'Does this mean that "The bridge opened in 1932." is true? Yes or No?\n', ["Yes", "No"], 0),
        ('Anna sold her bakery to a cousin last spring.\n'
         'Does this mean that "Anna still owns the bakery." is true? Yes or No?\n', ["Yes", "No"], 1),
        ('Rain is expected across the north on Friday.\n'
         'Does this mean that "Friday will be dry everywhere." is true? Yes or No?\n', ["Yes", "No"], 1),
    ],
    "cb": [
        ("Suppose B: I don't think the store is open today. A: Maybe it is. "
         'Can we infer that "the store is open today"? Yes, No, or Maybe?\n', ["Yes", "No", "Maybe"], 2),
        ('Suppose It was obvious that the train had left. Can we infer that "the train had left"? '
         "Yes, No, or Maybe?\n", ["Yes", "No", "Maybe"], 0),
        ('Suppose Nobody believed the ship would sink. Can we infer that "the ship would sink"? '
         "Yes, No, or Maybe?\n", ["Yes", "No", "Maybe"], 1),
    ],
    "boolq": [
        ("Tomato -- Botanically, a tomato is a fruit, a berry of the nightshade family. Is a tomato a fruit?\n",
         ["Yes", "No"], 0),
        ("Penguin -- Penguins are flightless birds of the southern hemisphere. Can penguins fly?\n",
         ["Yes", "No"], 1),
    ],
    "wsc": [
        ("The trophy does not fit into the suitcase because it is too large.\n"
         'In the previous sentence, does the pronoun "it" refer to The trophy? Yes or No?\n', ["No", "Yes"], 1),
        ("Mary thanked Jane because she had helped her move.\n"
         'In the previous sentence, does the pronoun "she" refer to Mary? Yes or No?\n', ["No", "Yes"], 0),
        # span1 "The dog." is not in the text: fixed as wsc.fixed does (case of the word, no period).
        ("the dog chased the cat until it was tired.\n"
         'In the previous sentence, does the pronoun "it" refer to the dog? Yes or No?\n', ["No", "Yes"], 1),
    ],
    "wic": [
        ('Does the word "bank" have the same meaning in these two sentences? Yes, No?\n'
         "She sat on the bank of the river.\nHe deposited cash at the bank.\n", ["No", "Yes"], 0),
        ('Does the word "run" have the same meaning in these two sentences? Yes, No?\n'
         "They run every morning.\nI run a mile a day.\n", ["No", "Yes"], 1),
    ],
    "multirc": [
        ("Sam planted tomatoes in May. By August the plants were taller than him.\n"
         'Question: When did Sam plant tomatoes?\nI found this answer "In May". Is that correct? Yes or No?\n',
         ["No", "Yes"], 1),
        ("Sam planted tomatoes in May. By August the plants were taller than him.\n"
         'Question: When did Sam plant tomatoes?\nI found this answer "In August". Is that correct? Yes or No?\n',
         ["No", "Yes"], 0),
        ("Sam planted tomatoes in May. By August the plants were taller than him.\n"
         'Question: What grew taller than Sam?\nI found this answer "The plants". Is that correct? Yes or No?\n',
         ["No", "Yes"], 1),
        ("The library opens at nine.\n"
         'Question: When does the library open?\nI found this answer "At noon". Is that correct? Yes or No?\n',
         ["No", "Yes"], 0),
    ],
    "copa": [
        ("The man broke his toe because", [" he dropped a hammer on his foot.", " he got a hole in his sock."], 0),
        ("I pressed the doorbell so", [" nobody was home.", " I heard a chime inside."], 1),
        ("The girl ran out of energy because", [" she played games.", " she jumped rope."], 1),
    ],
    "record": [
        ("Leeds beat Hull 2-0 on Saturday. Smith scored twice for Leeds.\n- Leeds win at home\n"
         "- Smith scores twice\n-",
         [" Hull manager praised his striker after the game.", " Leeds manager praised his striker after the game.",
          " Smith manager praised his striker after the game."], 1),
        ("Leeds beat Hull 2-0 on Saturday. Smith scored twice for Leeds.\n- Leeds win at home\n"
         "- Smith scores twice\n-",
         [" Hull fans watched Hull celebrate.", " Hull fans watched Leeds celebrate.",
          " Hull fans watched Smith celebrate."], 2),
    ],
    "squad": [
        ("Title: Moon\nContext: The Moon orbits the Earth about once every 27 days.\n"
         "Question: How often does the Moon orbit the Earth?\nAnswer:", [" about once every 27 days\n"], 0),
        ("Title: Moon\nContext: The Moon orbits the Earth about once every 27 days.\n"
         "Question: What does the Moon orbit?\nAnswer:", [" the Earth\n"], 0),
    ],
    "drop": [
        ("Passage: The Bears scored 7 points in the first quarter and 10 in the second. Kicker Jones made a "
         "40-yard field goal.\nQuestion: How many points did the Bears score in the first half?\nAnswer:",
         [" 17\n"], 0),
        ("Passage: The Bears scored 7 points in the first quarter and 10 in the second. Kicker Jones made a "
         "40-yard field goal.\nQuestion: Who made the field goal?\nAnswer:", [" Jones\n"], 0),
        ("Passage: The treaty was signed on 4 March 1801 in Vienna and Paris.\n"
         "Question: When was the treaty signed?\nAnswer:", [" 4 March 1801\n"], 0),
        ("Passage: The treaty was signed on 4 March 1801 in Vienna and Paris.\n"
         "Question: Where was the treaty signed?\nAnswer:", [" Vienna\n"], 0),
    ],
}


@pytest.mark.parametrize("task", TASK_ORDER)
def test_fixture_renders_to_expected_prompt_and_candidates(task):
    got = [(e.prompt, e.candidates, e.gold) for e in fixture_examples(task)]
    assert got == EXPECTED[task]


def test_record_marks_every_gold_entity_and_adds_untagged_answers():
    ex = render("record", {"passage": "Ann met Bo.", "query": "@placeholder smiled.",
                           "entities": ["Ann", "Bo"], "answers": ["Ann", "Annie"]})
    assert ex.candidates == [" Ann smiled.", " Bo smiled.", " Annie smiled."]
    assert ex.gold == 0 and ex.meta["gold_set"] == [0, 2]


def test_generation_examples_carry_all_gold_answers():
    squad_dev = fixture_examples("squad", "test")[0]
    assert squad_dev.answers == ["100 degrees Celsius", "100 degrees", "100 degrees Celsius"]
    assert squad_dev.candidates == [" 100 degrees Celsius\n"]
    drop_train = fixture_examples("drop")
    assert drop_train[3].answers == ["Vienna", "Paris"]  # a multi-span answer: each span is a gold string
    drop_dev = fixture_examples("drop", "test")[0]
    assert drop_dev.answers == ["March 2010", "2010"]  # dev: the validated answers, dates without blanks
    assert drop_dev.prompt.endswith("Question: When did the Jets win?\nAnswer:")


def test_drop_skips_questions_without_a_usable_answer():
    raw = read_local_file("drop", FIXTURES / "DROP" / "drop_dataset_train.json", "train")
    assert [r["question"] for r in raw] == [
        "How many points did the Bears score in the first half?", "Who made the field goal?",
        "When was the treaty signed?", "Where was the treaty signed?"]


# --------------------------------------------------------------------------------------------------
# Hub path: the Hub's field names map onto the same raw records as the official files
# --------------------------------------------------------------------------------------------------

HUB_TRAIN_ROWS = {
    "sst2": [{"sentence": "a gentle , funny little film ", "label": 1, "idx": 0},
             {"sentence": "the plot goes nowhere ", "label": 0, "idx": 1},
             {"sentence": 'sharp and "sweet" at once ', "label": 1, "idx": 2}],
    "rte": [{"premise": "The bridge over the river was opened in 1932 by the mayor.",
             "hypothesis": "The bridge opened in 1932.", "idx": 0, "label": 0},
            {"premise": "Anna sold her bakery to a cousin last spring.", "hypothesis": "Anna still owns the bakery.",
             "idx": 1, "label": 1},
            {"premise": "Rain is expected across the north on Friday.", "hypothesis": "Friday will be dry everywhere.",
             "idx": 2, "label": 1}],
    "cb": [{"premise": "B: I don't think the store is open today. A: Maybe it is.",
            "hypothesis": "the store is open today", "idx": 0, "label": 2},
           {"premise": "It was obvious that the train had left.", "hypothesis": "the train had left", "idx": 1,
            "label": 0},
           {"premise": "Nobody believed the ship would sink.", "hypothesis": "the ship would sink", "idx": 2,
            "label": 1}],
    "boolq": [{"question": "is a tomato a fruit", "idx": 0, "label": 1,
               "passage": "Tomato -- Botanically, a tomato is a fruit, a berry of the nightshade family."},
              {"question": "Can penguins fly?", "idx": 1, "label": 0,
               "passage": "Penguin -- Penguins are flightless birds of the southern hemisphere."}],
    "wsc": [{"text": "The trophy does not fit into the suitcase because it is too large.", "span1_index": 0,
             "span2_index": 9, "span1_text": "The trophy", "span2_text": "it", "idx": 0, "label": 1},
            {"text": "Mary thanked Jane because she had helped her move.", "span1_index": 0, "span2_index": 4,
             "span1_text": "Mary", "span2_text": "she", "idx": 1, "label": 0},
            {"text": "the dog chased the cat until it was tired.", "span1_index": 0, "span2_index": 6,
             "span1_text": "the dog", "span2_text": "it", "idx": 2, "label": 1}],
    "wic": [{"word": "bank", "sentence1": "She sat on the bank of the river.",
             "sentence2": "He deposited cash at the bank.", "start1": 15, "start2": 25, "end1": 19, "end2": 29,
             "idx": 0, "label": 0},
            {"word": "run", "sentence1": "They run every morning.", "sentence2": "I run a mile a day.",
             "start1": 5, "start2": 2, "end1": 8, "end2": 5, "idx": 1, "label": 1}],
    "multirc": [
        {"paragraph": "Sam planted tomatoes in May. By August the plants were taller than him.",
         "question": "When did Sam plant tomatoes?", "answer": "In May",
         "idx": {"paragraph": 0, "question": 0, "answer": 0}, "label": 1},
        {"paragraph": "Sam planted tomatoes in May. By August the plants were taller than him.",
         "question": "When did Sam plant tomatoes?", "answer": "In August",
         "idx": {"paragraph": 0, "question": 0, "answer": 1}, "label": 0},
        {"paragraph": "Sam planted tomatoes in May. By August the plants were taller than him.",
         "question": "What grew taller than Sam?", "answer": "The plants",
         "idx": {"paragraph": 0, "question": 1, "answer": 2}, "label": 1},
        {"paragraph": "The library opens at nine.", "question": "When does the library open?", "answer": "At noon",
         "idx": {"paragraph": 1, "question": 2, "answer": 3}, "label": 0}],
    "copa": [{"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
              "choice2": "He got a hole in his sock.", "question": "cause", "idx": 0, "label": 0},
             {"premise": "I pressed the doorbell", "choice1": "Nobody was home.", "choice2": "I heard a chime inside.",
              "question": "effect", "idx": 1, "label": 1},
             {"premise": "The girl ran out of energy.", "choice1": "She played games.", "choice2": "She jumped rope.",
              "question": "cause", "idx": 2, "label": 1}],
    "record": [{"passage": "Leeds beat Hull 2-0 on Saturday. Smith scored twice for Leeds.\n@highlight\n"
                           "Leeds win at home\n@highlight\nSmith scores twice",
                "query": "@placeholder manager praised his striker after the game.",
                "entities": ["Hull", "Leeds", "Smith"],
                "entity_spans": {"text": ["Leeds", "Hull"], "start": [0, 11], "end": [4, 14]},
                "answers": ["Leeds"], "idx": {"passage": 0, "query": 0}},
               {"passage": "Leeds beat Hull 2-0 on Saturday. Smith scored twice for Leeds.\n@highlight\n"
                           "Leeds win at home\n@highlight\nSmith scores twice",
                "query": "Hull fans watched @placeholder celebrate.",
                "entities": ["Hull", "Leeds", "Smith"],
                "entity_spans": {"text": ["Leeds", "Hull"], "start": [0, 11], "end": [4, 14]},
                "answers": ["Smith"], "idx": {"passage": 0, "query": 1}}],
    "squad": [{"id": "q1", "title": "Moon", "context": "The Moon orbits the Earth about once every 27 days.",
               "question": "How often does the Moon orbit the Earth? ",
               "answers": {"text": ["about once every 27 days"], "answer_start": [32]}},
              {"id": "q2", "title": "Moon", "context": "The Moon orbits the Earth about once every 27 days.",
               "question": "What does the Moon orbit?", "answers": {"text": ["the Earth"], "answer_start": [20]}}],
    "drop": [
        {"section_id": "nfl_1", "query_id": "a1", "question": "How many points did the Bears score in the first half?",
         "passage": "The Bears scored 7 points in the first quarter and 10 in the second. Kicker Jones made a "
                    "40-yard field goal.", "answers_spans": {"spans": ["17"], "types": ["number"]}},
        {"section_id": "nfl_1", "query_id": "a2", "question": "Who made the field goal?",
         "passage": "The Bears scored 7 points in the first quarter and 10 in the second. Kicker Jones made a "
                    "40-yard field goal.", "answers_spans": {"spans": ["Jones"], "types": ["span"]}},
        {"section_id": "history_1", "query_id": "b1", "question": "When was the treaty signed?",
         "passage": "The treaty was signed on 4 March 1801 in Vienna and Paris.",
         "answers_spans": {"spans": ["4 March 1801"], "types": ["date"]}},
        {"section_id": "history_1", "query_id": "b2", "question": "Where was the treaty signed?",
         "passage": "The treaty was signed on 4 March 1801 in Vienna and Paris.",
         "answers_spans": {"spans": ["Vienna", "Paris"], "types": ["span", "span"]}}],
}


@pytest.mark.parametrize("task", TASK_ORDER)
def test_hub_fields_map_onto_the_local_raw_records(task):
    from datasets import Dataset

    rows = Dataset.from_list(HUB_TRAIN_ROWS[task])
    folder, train, _ = LAYOUT[task]
    assert list(hub_rows(task, rows)) == read_local_file(task, FIXTURES / folder / train, "train")


def test_load_hub_passes_the_source_to_load_dataset(monkeypatch):
    import datasets

    calls = []

    def fake_load_dataset(path, name=None, *, revision=None, split=None):
        calls.append((path, name, revision, split))
        return datasets.Dataset.from_list(HUB_TRAIN_ROWS["rte"] if split == "train" else HUB_TRAIN_ROWS["rte"][:1])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    cfg = task_cfg("rte", source={"revision": "abc123"}, num_train=1, num_val=1, num_test=5)
    splits = load_splits(cfg, data_seed=0)
    assert calls == [("aps/super_glue", "rte", "abc123", "train"), ("aps/super_glue", "rte", "abc123", "validation")]
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [1, 1, 1]
    assert splits["test"][0].prompt == EXPECTED["rte"][0][0]


def test_hub_rows_with_unexpected_fields_name_the_source():
    from datasets import Dataset

    rows = hub_rows("rte", Dataset.from_list([{"sentence": "x", "label": 0}]), "some/repo [train]")
    with pytest.raises(RmpeftError, match=r"some/repo \[train\]: row 0 .*premise.*found: label, sentence"):
        rows[0]


def test_hub_load_failure_is_one_line_naming_the_source(monkeypatch):
    import datasets

    def failing(*args, **kwargs):
        raise RuntimeError("Dataset scripts are no longer supported, but found super_glue.py\nmore")

    monkeypatch.setattr(datasets, "load_dataset", failing)
    with pytest.raises(RmpeftError) as e:
        load_hub("rte", OmegaConf.create({"path": "super_glue", "name": "rte", "revision": None,
                                          "train_split": "train", "test_split": "validation"}))
    assert "super_glue/rte [train]" in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------------------------------
# Split protocol
# --------------------------------------------------------------------------------------------------

def test_plan_sizes_disjointness_and_mezo_permutation():
    plan = plan_splits(5000, 700, num_train=1000, num_val=500, num_test=1000, seed=3)
    assert (len(plan.train), len(plan.validation), len(plan.test)) == (1000, 500, 700)
    assert not set(plan.train) & set(plan.validation)
    np.random.seed(3)  # MeZO's sampler: np.random.seed(seed); np.random.permutation(n)[:num_train + num_dev]
    mezo = np.random.permutation(5000)[:1500].tolist()
    assert plan.train == mezo[:1000] and plan.validation == mezo[1000:]
    np.random.seed(3)
    assert plan.test == np.random.permutation(700).tolist()


def test_plan_is_deterministic_and_differs_between_seeds():
    kwargs = dict(num_train=100, num_val=50, num_test=100)
    assert plan_splits(2000, 800, seed=1, **kwargs) == plan_splits(2000, 800, seed=1, **kwargs)
    a, b = plan_splits(2000, 800, seed=1, **kwargs), plan_splits(2000, 800, seed=2, **kwargs)
    assert a.train != b.train and a.validation != b.validation and a.test != b.test


def test_small_train_split_keeps_validation_and_trains_on_the_rest():
    # COPA-sized split: 400 examples, 100 for validation -> 300 train (not 1000).
    plan = plan_splits(400, 100, num_train=1000, num_val=100, num_test=1000, seed=0)
    assert (len(plan.train), len(plan.validation), len(plan.test)) == (300, 100, 100)
    assert sorted(plan.train + plan.validation) == list(range(400))


def test_full_train_uses_everything_outside_the_same_validation_set():
    sampled = plan_splits(3000, 300, num_train=1000, num_val=500, num_test=1000, seed=4)
    full = plan_splits(3000, 300, num_train=1000, num_val=500, num_test=1000, seed=4, full_train=True)
    assert full.validation == sampled.validation
    assert full.train[:1000] == sampled.train
    assert sorted(full.train + full.validation) == list(range(3000))


def test_load_splits_on_fixtures_is_deterministic(tmp_path):
    cfg = task_cfg("multirc", data_dir=str(FIXTURES / "MultiRC"), num_train=2, num_val=2, num_test=5)
    a, b = load_splits(cfg, 0), load_splits(cfg, 0)
    assert [len(a[k]) for k in ("train", "validation", "test")] == [2, 2, 2]
    assert a == b
    seen = {e.prompt + e.candidates[e.gold] for e in a["train"] + a["validation"]}
    assert len(seen) == 4  # train and validation are disjoint and cover the 4 answer options


def test_synthetic_task_sizes_determinism_and_visible_answer():
    cfg = task_cfg("synthetic")
    a, b, c = load_splits(cfg, 0), load_splits(cfg, 0), load_splits(cfg, 1)
    assert [len(a[k]) for k in ("train", "validation", "test")] == [64, 32, 32]
    assert a == b and a["train"] != c["train"]
    from rmpeft.data.synthetic import CUES

    for ex in a["train"] + a["test"]:
        assert len(ex.prompt + max(ex.candidates, key=len)) < 60
        cue = ex.prompt.split(".")[0]
        assert cue in CUES[ex.gold]  # the cue word gives the answer away
    assert 0.3 < np.mean([e.gold for e in a["train"]]) < 0.7
    small = load_splits(task_cfg("synthetic", num_train=8, num_val=4, num_test=6), 0)
    assert [len(small[k]) for k in ("train", "validation", "test")] == [8, 4, 6]


# --------------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------------

def test_every_task_has_a_complete_config():
    names = sorted(p.stem for p in (REPO / "conf" / "task").glob("*.yaml"))
    assert names == sorted(TASK_NAMES + IMAGE_TASKS)  # image tasks: tests/test_vision_data.py
    assert set(CLASS_SPECS) == set(IMAGE_TASKS)       # every image task has its class names and templates
    for name in IMAGE_TASKS:
        assert task_cfg(name).kind == KINDS[name]
    for name in TASK_NAMES:
        cfg = task_cfg(name)
        assert cfg.name == name and cfg.kind == KINDS[name]
        assert cfg.metric == ("f1" if cfg.kind == "generation" else "accuracy")
        assert cfg.num_train > cfg.num_val >= 1 and cfg.num_test >= 1 and cfg.grad_accum >= 1
        assert cfg.full_train is False and "data_dir" in cfg
        if name in TASK_ORDER:
            assert cfg.source.path and cfg.source.train_split == "train" and cfg.source.test_split == "validation"
            assert tuple(cfg.files.values()) == LAYOUT[name][1:]
    # The small training splits hold out a smaller validation set (COPA 400, CB 250, WSC 554 examples).
    assert (task_cfg("copa").num_val, task_cfg("cb").num_val, task_cfg("wsc").num_val) == (100, 100, 100)


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------

def test_unknown_task_lists_the_choices():
    with pytest.raises(RmpeftError, match=r"unknown task 'mnli'; valid choices: boolq, cb, copa, drop"):
        load_splits({"name": "mnli"}, 0)


def test_missing_data_file_is_named(tmp_path):
    with pytest.raises(DataFileError, match=rf"missing data file {tmp_path / 'train.jsonl'}"):
        load_splits(task_cfg("rte", data_dir=str(tmp_path)), 0)
    with pytest.raises(DataFileError, match="task.data_dir .* is not a folder"):
        load_splits(task_cfg("rte", data_dir=str(tmp_path / "nope")), 0)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    good = '{"premise": "p", "hypothesis": "h", "label": "entailment", "idx": 0}\n'
    path = write(tmp_path / "train.jsonl", good + "\n" + '{"premise": "p", "hypothesis": \n')
    with pytest.raises(DataFileError, match=rf"^{path}:3: malformed JSON line"):
        read_local_file("rte", path)


def test_missing_field_and_bad_label_name_file_and_line(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"premise": "p", "hypothesis": "h", "label": "entailment"}\n'
                                       '{"premise": "p", "label": "entailment"}\n')
    with pytest.raises(DataFileError, match=rf"^{path}:2: missing field 'hypothesis'"):
        read_local_file("rte", path)
    path = write(tmp_path / "b.jsonl", '{"premise": "p", "hypothesis": "h", "label": "maybe"}\n')
    with pytest.raises(DataFileError, match=rf"^{path}:1: unknown label 'maybe'; valid labels: entailment, "
                                            r"not_entailment"):
        read_local_file("rte", path)
    path = write(tmp_path / "c.jsonl", '{"question": "q", "passage": "p", "label": 2}\n')
    with pytest.raises(DataFileError, match=rf"^{path}:1: label '2' should be true/false or 0/1"):
        read_local_file("boolq", path)
    path = write(tmp_path / "d.jsonl", '{"idx": 0, "passage": {"text": "t", "questions": [{"question": "q", '
                                       '"answers": [{"text": "a", "label": 1}, {"label": 0}]}]}}\n')
    with pytest.raises(DataFileError, match=rf"^{path}:1 \(question 0, answer 1\): missing field 'text'"):
        read_local_file("multirc", path)


def test_malformed_tsv_row_names_file_and_line(tmp_path):
    path = write(tmp_path / "train.tsv", "sentence\tlabel\ngood film \t1\nno label here\n")
    with pytest.raises(DataFileError, match=rf"^{path}:3: expected 2 tab-separated fields, found 1"):
        read_local_file("sst2", path)
    path = write(tmp_path / "dev.tsv", "text\tlabel\nx\t1\n")
    with pytest.raises(DataFileError, match=rf"^{path}:1: header lacks column\(s\) sentence"):
        read_local_file("sst2", path)
    path = write(tmp_path / "bad.tsv", "sentence\tlabel\nx\tpositive\n")
    with pytest.raises(DataFileError, match=rf"^{path}:2: label 'positive' should be 0 or 1"):
        read_local_file("sst2", path)


def test_malformed_json_document_names_file_and_line(tmp_path):
    path = write(tmp_path / "train-v1.1.json", '{"data": [\n  {"title": "x",\n   "paragraphs": [}\n]}')
    with pytest.raises(DataFileError, match=rf"^{path}:3: malformed JSON"):
        read_local_file("squad", path)
    path = write(tmp_path / "dev-v1.1.json", '{"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}')
    with pytest.raises(DataFileError, match=r"\(data\[0\]\.paragraphs\[0\]\): missing field 'context'"):
        read_local_file("squad", path)


def test_sizes_that_leave_no_training_data_are_refused():
    with pytest.raises(RmpeftError, match=r"task.num_val=500 leaves no training examples: the train split of copa "
                                          r"has 400 examples; set task.num_val below 400"):
        plan_splits(400, 100, num_train=1000, num_val=500, num_test=1000, seed=0, task="copa")
    with pytest.raises(RmpeftError, match=r"the train split of record has 1 example\(s\); training and validation "
                                          r"need at least 2"):
        plan_splits(1, 100, num_train=10, num_val=1, num_test=10, seed=0, task="record")
    with pytest.raises(RmpeftError, match=r"data_seed must be an integer in \[0, 4294967295\], got -1"):
        plan_splits(400, 100, num_train=10, num_val=5, num_test=10, seed=-1)
    with pytest.raises(RmpeftError, match=r"task.num_test must be an integer >= 1, got 0"):
        plan_splits(400, 100, num_train=10, num_val=5, num_test=0, seed=0)


def test_task_order_is_the_papers_table_order():
    assert TASK_ORDER == ("sst2", "rte", "wsc", "wic", "cb", "boolq", "multirc", "copa", "record", "squad", "drop")
    assert TASK_NAMES == TASK_ORDER + ("synthetic",)
    tables = [p for p in (REPO / "rmpeft" / "reporting" / "paper_numbers" / "table5_main.csv",
                          REPO / "results" / "paper" / "table5_main.csv",
                          REPO.parent / "shared" / "paper" / "table5_main.csv") if p.is_file()]
    if not tables:
        pytest.skip("the paper's Table 5 is not in this checkout")
    header = tables[0].read_text().splitlines()[0].split(",")
    assert [task_label(t) for t in TASK_ORDER] == header[3:-1]  # model, method, params, <tasks>, avg


def test_one_file_split_into_disjoint_test_and_training_pools(tmp_path):
    """task.test_pool_share: a task whose train split is not at hand (BoolQ in the shared data) takes
    both pools from its validation file, disjoint, with the test pool the same for every seed."""
    import json

    rows = [{"question": f"is {i} even", "passage": f"N{i} -- number {i}.", "idx": i, "label": i % 2 == 0}
            for i in range(40)]
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = task_cfg("boolq", data_dir=str(tmp_path), num_train=20, num_val=5, num_test=100, test_pool_share=0.25)
    splits = {seed: load_splits(cfg, seed) for seed in (1, 2)}
    for seed, s in splits.items():
        seen = {role: {ex.prompt for ex in s[role]} for role in ("train", "validation", "test")}
        assert len(seen["test"]) == 10 and len(seen["train"]) == 20 and len(seen["validation"]) == 5
        assert not (seen["test"] & (seen["train"] | seen["validation"]))
    assert {ex.prompt for ex in splits[1]["test"]} == {ex.prompt for ex in splits[2]["test"]}
    assert {ex.prompt for ex in splits[1]["train"]} != {ex.prompt for ex in splits[2]["train"]}
    without = load_splits(task_cfg("boolq", data_dir=str(tmp_path), files={"train": "val.jsonl", "test": "val.jsonl"},
                                   num_train=20, num_val=5, num_test=100), 1)
    assert len(without["test"]) == 40   # without the share, the pools overlap: the share is what keeps them apart

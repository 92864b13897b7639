"""Generated documentation blocks: checked against their commands, rewritten on request; the
repository's own docs are current with the committed records."""

from __future__ import annotations

import pytest

from rmpeft.reporting.doc_blocks import BLOCK, main
from rmpeft.records import run_dir, write_record
from tests.helpers import REPO


def _results(root, test):
    for lr, score in ((1e-2, test), (1e-1, 0.5)):
        cfg = {"name": "exp", "seed": 1, "model": {"name": "m"}, "task": {"name": "rte"},
               "method": {"name": "lora"}, "optim": {"lr": lr}}
        write_record(run_dir({**cfg, "results_root": str(root)}),
                     {"status": "finished", "config": cfg, "val_metric": score, "test_metric": score,
                      "metric": "accuracy", "trainable_share": 0.003})


def test_a_block_is_checked_then_rewritten_then_current(tmp_path, capsys):
    _results(tmp_path / "runs", 0.7)
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Results\n\n<!-- generated: rmpeft-tables {tmp_path / 'runs'} --table main -->\nold\n"
                   "<!-- end generated -->\n\nText after.\n")
    assert main([str(doc)]) == 1 and "stale" in capsys.readouterr().out
    assert main([str(doc), "--write"]) == 0
    text = doc.read_text()
    assert "| 70.0† |" in text and "\nold\n" not in text and text.endswith("Text after.\n")
    assert main([str(doc)]) == 0
    _results(tmp_path / "runs", 0.8)                 # a record changes: the doc is stale again
    assert main([str(doc)]) == 1


def test_only_table_commands_run(tmp_path, capsys):
    doc = tmp_path / "doc.md"
    doc.write_text("<!-- generated: rm -rf / -->\nx\n<!-- end generated -->\n")
    assert main([str(doc)]) == 2 and "expected one of rmpeft-tables" in capsys.readouterr().err


@pytest.mark.parametrize("options, message", [
    ('"abc', "cannot be split into arguments: No closing quotation"),
    ("--table main --bogus", "unrecognized arguments: --bogus"),
    ("--table nosuch", "invalid choice: 'nosuch'"),
    ("--table main --out {out}", "may not write files (--out)"),
    ("--table main --out={out}", "may not write files (--out)"),
    ("--table main --ou {out}", "may not write files (--out)"),
])
def test_a_bad_block_command_is_one_line_naming_the_file_and_writes_nothing(tmp_path, capsys, options, message):
    _results(tmp_path / "runs", 0.7)
    out = tmp_path / "out"
    doc = tmp_path / "doc.md"
    doc.write_text(f"<!-- generated: rmpeft-tables {tmp_path / 'runs'} {options.format(out=out)} -->\nx\n"
                   "<!-- end generated -->\n")
    assert main([str(doc)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"rmpeft-docs: error: {doc}: ") and message in err[0], err
    assert not out.exists()


def test_the_repositorys_generated_docs_are_current(capsys):
    docs = [p for p in (REPO / "docs").glob("*.md") if BLOCK.search(p.read_text())] + [REPO / "README.md"]
    docs = [p for p in docs if BLOCK.search(p.read_text())]
    assert docs, "no generated blocks found"
    assert main([str(p) for p in docs]) == 0, capsys.readouterr().out + " (run rmpeft-docs FILE --write)"

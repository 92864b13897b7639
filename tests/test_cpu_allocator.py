"""keep_freed_memory: after warm-up, forwards of a SmolLM2-shaped model reuse their memory instead of
faulting pages in again (in child processes: the setting is process-wide).

Both children first pin glibc to giving memory back (fixed thresholds of 128 KiB, its defaults). Left
alone, glibc raises its thresholds by itself as large blocks are freed, after a number of forwards that
varies from machine to machine, so an unpinned child is no reliable control."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent("""
    import ctypes, ctypes.util, json, resource, sys, torch
    from rmpeft.cpu_allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    assert libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1
    if sys.argv[1] == "keep":
        assert keep_freed_memory() and keep_freed_memory()
    from rmpeft import scoring
    from rmpeft.bench.e2e import make_batch, workloads
    from rmpeft.bench.workload import build_model
    torch.set_num_threads(1)
    model = build_model("smollm2-135m", torch.float32, torch.device("cpu"))
    batch = make_batch(workloads(False)[0], model.config.vocab_size, torch.device("cpu"))
    def faults_of_one_forward():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with torch.no_grad():
            scoring.predict_choices(model, batch, "shared")
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps([faults_of_one_forward() for _ in range(6)]))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc, Linux fault counters")
def test_forwards_reuse_freed_memory_instead_of_faulting_it_in_again():
    def faults(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    give_back, keep = faults("give_back"), faults("keep")
    assert min(give_back[2:]) > 5_000, give_back   # memory given back: every forward faults it in again
    assert sum(keep[2:]) < 2_000, keep             # after two warm-up forwards: the same pages, reused

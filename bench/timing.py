"""Time the method from outside: the functions in xpert.py carry no timing code, so a benchmark
wraps the module's own functions while a call runs and adds up where the time went.

    with phase_timer() as t:
        xpert.prune_event(model, calib, 0.4)
    t == {"capture": ..., "scoring": ..., "pbs": ..., "fold": ..., "total": ...}   # seconds

capture = the forward passes of sequential_blocks (both, per block), scoring = consumer energies,
ForeSight scores and mask selection, pbs = the PBS solves, fold = everything else inside the event
(EMA, fold, adapter reset). On a GPU each span synchronises first (CUDA work is asynchronous)."""
import contextlib
import functools
import time

import torch

import xpert

PHASES = {"scoring": ("consumer_energy", "code_factors", "foresight_scores", "select_mask"),
          "pbs": ("pbs_output", "pbs_diag"), "prune": ("sparsegpt_prune",)}


def now():
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()  # GPU work is asynchronous: wait for it before reading the clock
    return time.perf_counter()


@contextlib.contextmanager
def phase_timer():
    t = {"capture": 0.0, "scoring": 0.0, "pbs": 0.0, "prune": 0.0}
    saved = {}

    def timed(phase, fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            t0 = now()
            try:
                return fn(*a, **k)
            finally:
                t[phase] += now() - t0
        return wrapper

    # a generator: only the time spent inside it (its own forwards) counts as capture
    def timed_gen(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            it = fn(*a, **k)
            while True:
                t0 = now()
                try:
                    item = next(it)
                except StopIteration:
                    t["capture"] += now() - t0
                    return
                t["capture"] += now() - t0
                yield item
        return wrapper

    for phase, names in PHASES.items():
        for name in names:
            saved[name] = getattr(xpert, name)
            setattr(xpert, name, timed(phase, saved[name]))
    saved["sequential_blocks"] = xpert.sequential_blocks
    xpert.sequential_blocks = timed_gen(saved["sequential_blocks"])
    saved["FORESIGHT"] = xpert.FORESIGHT  # the event looks its reading up in this table
    xpert.FORESIGHT = {k: getattr(xpert, fn.__name__) for k, fn in saved["FORESIGHT"].items()}
    t0 = now()
    try:
        yield t
    finally:
        for name, fn in saved.items():
            setattr(xpert, name, fn)
        t["total"] = now() - t0
        t["fold"] = max(0.0, t["total"] - t["capture"] - t["scoring"] - t["pbs"] - t["prune"])

"""What the grader guards against while an answer runs (issues 14 and 22), kept apart from the
checks.

An answer runs inside `answer_running()`, which

  - switches off the functions it is graded against: xpert's library (foresight_scores, select_mask,
    pbs_output, ..., and every private helper such as _prune_bounded) and the grader's own reference
    computations (the brute force, the lstsq references, the exact chance IoU). Each one's code
    object is swapped for a tripwire, so every reference to it is caught (xpert.f, `from xpert
    import f`, an alias, functools.partial); a call raises LibraryCall and is recorded even when the
    answer catches it;
  - blocks `import exercises_solutions` (the reference solutions), unless the solution itself is
    graded;
  - turns os._exit / os.abort into SystemExit, which the grader reports as a FAIL (sys.exit and
    exit() raise SystemExit anyway).

Submission(module) wraps the answer: every function runs inside answer_running(), tensors that
require grad are handed over detached (so numpy works on them), and the inputs are compared with a
copy taken before the call, so an answer that changes its inputs in place fails with a message
naming the input.
`Submission.traced(name, ...)` also counts the lines of Python the answer executes, which is how a
"no loop" task is enforced (a deterministic count, not a time limit on a shared machine).
"""
import builtins
import contextlib
import importlib.abc
import inspect
import os
import sys
import sysconfig
import types

import torch

SOLUTIONS = "exercises_solutions"


class Fail(Exception):
    """A graded check did not hold; the message says which and why."""


class LibraryCall(Fail):
    """A submission called something it is graded against (the library, the grader's references, the
    solutions)."""


_TRIP_CODES = {}  # tripwire code object -> label ("xpert.select_mask", "exercises.check.pbs_lstsq")
_HITS = []  # labels of what the answer now running called or imported
_STATE = {"depth": 0, "saved": []}
# [(module, [names], label prefix)] registered by the grader: what answer_running() switches off
_OFF = []


def switch_off(module, names, prefix):
    """Register functions of `module` to be switched off while an answer runs (names: list or a
    callable returning one, evaluated at each start, so helpers added to xpert later are covered
    too)."""
    _OFF.append((module, names, prefix))


def private_functions(module):
    """Names of the private helpers (_name) defined in `module` itself."""
    return [n for n, f in vars(module).items() if n.startswith("_") and not n.startswith("__")
            and isinstance(f, types.FunctionType) and f.__module__ == module.__name__]


def _tripwire(*args, **kwargs):
    # runs with the switched-off function's globals (its __code__ replaces the function's): the name
    # below is put there while the answer runs
    return _exercises_library_called()  # noqa: F821


def _library_called():
    label = _TRIP_CODES.get(sys._getframe(1).f_code, "?")
    _HITS.append(label)
    raise LibraryCall(label)


def _trip_code(label):
    name = label.rsplit(".", 1)[-1]
    code = _tripwire.__code__.replace(co_name=name)
    try:
        code = code.replace(co_qualname=label)
    except TypeError:  # Python < 3.11
        pass
    _TRIP_CODES[code] = label
    return code


class _NoSolutions(importlib.abc.MetaPathFinder):
    """Refuses `import exercises_solutions...` (the entries already imported are hidden
    meanwhile)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == SOLUTIONS or fullname.startswith(SOLUTIONS + "."):
            _HITS.append(f"the reference solutions ({fullname})")
            raise ImportError(f"{fullname} (the reference solutions) cannot be imported while an "
                              "answer is graded")
        return None


class _Exit(SystemExit):
    pass


def _no_exit(*args, **kwargs):
    raise _Exit("os._exit() / os.abort()")


def _swap_on():
    saved = _STATE["saved"]
    for module, names, prefix in _OFF:
        for name in (names() if callable(names) else names):
            f = getattr(module, name, None)
            if f is None or not callable(f):
                continue
            label = f"{prefix}.{name}"
            target = inspect.unwrap(f)
            if isinstance(target, types.FunctionType) and not target.__code__.co_freevars:
                saved.append(("globals", target.__globals__, None))
                target.__globals__["_exercises_library_called"] = _library_called
                saved.append(("code", target, target.__code__))
                target.__code__ = _trip_code(label)
            else:
                trip = types.FunctionType(_trip_code(label),
                                          {"__builtins__": builtins,
                                           "_exercises_library_called": _library_called}, name)
                saved.append(("attr", (module, name), f))
                setattr(module, name, trip)


def _swap_off():
    for kind, a, b in reversed(_STATE["saved"]):
        if kind == "code":
            a.__code__ = b
        elif kind == "globals":
            a.pop("_exercises_library_called", None)
        elif kind == "attr":
            setattr(a[0], a[1], b)
        elif kind == "module":
            sys.modules[a] = b
        elif kind == "finder":
            if a in sys.meta_path:
                sys.meta_path.remove(a)
        elif kind == "os":
            setattr(os, a, b)
        elif kind == "torch":
            torch.set_default_dtype(a)
            torch.set_grad_enabled(b)
    _STATE["saved"].clear()


@contextlib.contextmanager
def answer_running(solutions_allowed=False):
    """While an answer runs (or its file is imported): the registered functions are tripwires, the
    reference solutions cannot be imported (unless allowed), os._exit raises SystemExit; torch's
    default dtype and grad mode are restored afterwards."""
    _STATE["depth"] += 1
    try:
        if _STATE["depth"] == 1:
            saved = _STATE["saved"]
            saved.append(("torch", torch.get_default_dtype(), torch.is_grad_enabled()))
            for name in ("_exit", "abort"):
                saved.append(("os", name, getattr(os, name)))
                setattr(os, name, _no_exit)
            if not solutions_allowed:
                for key in [k for k in sys.modules if k == SOLUTIONS
                            or k.startswith(SOLUTIONS + ".")]:
                    saved.append(("module", key, sys.modules.pop(key)))
                finder = _NoSolutions()
                sys.meta_path.insert(0, finder)
                saved.append(("finder", finder, None))
            _swap_on()
        yield
    finally:
        _STATE["depth"] -= 1
        if _STATE["depth"] == 0:
            _swap_off()


def take_hits():
    hits = list(_HITS)
    del _HITS[:]
    return hits


def shortcut_message(who, label):
    """who: "pbs_solve()" or "the file"."""
    name = who
    if label.startswith("xpert."):
        return (f"{name} calls {label}: this exercise asks you to write that computation yourself. "
                "The grader checks answers against xpert, so an answer that calls it (or wraps it) "
                "proves nothing")
    if label.startswith("the reference solutions"):
        return (f"{name} imports {label.split('(')[-1].rstrip(')')}, {label.split(' (')[0]}: an "
                "answer that uses them proves nothing. Write it yourself (read them once you pass)")
    return (f"{name} calls {label}, the grader's own reference computation: an answer that calls "
            "it proves nothing. Write it yourself")


# -----------------------------------------------------------------------------
# Inputs unchanged; tracing

def _tensors(obj, label, out, depth=0):
    """[(label, tensor)] inside obj: a tensor, or a dict / list / tuple of them."""
    if isinstance(obj, torch.Tensor):
        out.append((label, obj))
    elif depth < 3 and isinstance(obj, dict):
        for k, v in obj.items():
            _tensors(v, f"{label}[{k!r}]", out, depth + 1)
    elif depth < 3 and isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _tensors(v, f"{label}[{i}]", out, depth + 1)
    return out


def _detached(obj):
    """Tensors that require grad are handed over detached (same storage): a numpy answer must not
    fail on them."""
    if isinstance(obj, torch.Tensor):
        return obj.detach() if obj.requires_grad else obj
    if isinstance(obj, dict):
        return {k: _detached(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_detached(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_detached(v) for v in obj)
    return obj


def _arg_labels(fn, args, kwargs):
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
        return list(bound.arguments.items())
    except (TypeError, ValueError):
        return [(f"argument {i + 1}", a) for i, a in enumerate(args)] + list(kwargs.items())


def snapshot(fn, args, kwargs):
    out = []
    for label, value in _arg_labels(fn, args, kwargs):
        out += [(lab, t, t.clone()) for lab, t in _tensors(value, label, [])]
    return out


def _same(a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.is_floating_point() or a.is_complex():
        return bool(((a == b) | (a.isnan() & b.isnan())).all())
    return torch.equal(a, b)


def expect_unchanged(name, before):
    for label, t, copy in before:
        if _same(t, copy):
            continue
        if t.shape != copy.shape or t.dtype != copy.dtype:
            how = f"{tuple(copy.shape)} {copy.dtype} before, {tuple(t.shape)} {t.dtype} after"
        else:
            diff = ((t != copy) & ~((t != t) & (copy != copy)) if t.is_floating_point()
                    else (t != copy))
            idx = tuple(int(i) for i in diff.nonzero()[0])
            how = (f"{int(diff.sum())} of its {t.numel()} entries changed, the first at "
                   f"{list(idx)}: {copy[idx].item():.6g} before the call, {t[idx].item():.6g} "
                   "after")
        raise Fail(f"{name}() changed its input {label} in place ({how}). An answer must leave its "
                   "inputs as they were: in xpert.prune_event these tensors are the live weights, "
                   "masks, activation statistics and the EMA state, and an in-place change "
                   "corrupts them. Work on a copy (x = x.clone()) or out of place (x.abs() instead "
                   "of x.abs_(), x = x / c instead of x /= c, no out= / [..] = on inputs)")


_LIB_DIRS = tuple(sorted({os.path.dirname(os.__file__),
                          os.path.dirname(os.path.dirname(torch.__file__)),
                          sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}))
_GRADER_FILES = {os.path.abspath(os.path.join(os.path.dirname(__file__), f))
                 for f in ("check.py", "_common.py", "_guard.py")}


def _counted(code):
    return is_answer_file(code.co_filename)


def is_answer_file(f):
    """Not the grader, not the standard library, torch or another installed package."""
    return not (f.startswith(_LIB_DIRS) or f.startswith("<frozen")
                or os.path.abspath(f) in _GRADER_FILES)


def run_counting(fn, args, kwargs):
    """fn(*args, **kwargs) -> (result, lines of Python executed outside the libraries, code objects
    called)."""
    count, codes = [0], set()

    def local(frame, event, arg):
        if event == "line":
            count[0] += 1
        return local

    def call(frame, event, arg):
        if _counted(frame.f_code):
            codes.add(frame.f_code)
            return local
        return None
    old = sys.gettrace()
    sys.settrace(call)
    try:
        result = fn(*args, **kwargs)
    finally:
        sys.settrace(old)
    return result, count[0], codes


class Submission:
    """The answer as the checks see it: every function of it runs inside answer_running(), its
    inputs are checked unchanged after the call, and a call to what it is graded against (even one
    the answer caught) fails the exercise with a message that names it."""

    def __init__(self, module, solutions_allowed=False):
        self._module = module
        self._solutions_allowed = solutions_allowed

    def __getattr__(self, name):
        obj = getattr(self._module, name)
        if not callable(obj) or isinstance(obj, type):
            return obj

        def call(*args, **kwargs):
            return self._run(name, obj, args, kwargs, False)[0]
        call.__name__ = name
        return call

    def traced(self, name, *args, **kwargs):
        """(result, lines of Python the answer executed, code objects it called)."""
        return self._run(name, getattr(self._module, name), args, kwargs, True)

    def _run(self, name, fn, args, kwargs, trace):
        args, kwargs = _detached(args), _detached(kwargs)
        before = snapshot(fn, args, kwargs)
        take_hits()
        error = None
        try:
            with answer_running(self._solutions_allowed):
                out = run_counting(fn, args, kwargs) if trace else (fn(*args, **kwargs), None, None)
        except BaseException as e:  # noqa: B036  (re-raised below unless a shortcut explains it)
            error = e
        hits = take_hits()
        if hits and not isinstance(error, KeyboardInterrupt):
            raise LibraryCall(shortcut_message(f"{name}()", hits[0])) from error
        if error is not None:
            raise error
        expect_unchanged(name, before)
        return out

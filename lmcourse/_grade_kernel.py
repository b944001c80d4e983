"""The code `lmcourse grade` runs in a graded notebook's kernel, after the notebook's own cells.

`lmcourse.grading` sends this file's source (from the copy it read before any notebook ran),
followed by one call of `lmcourse_grade_in_kernel`, as one more cell. Nothing here comes from the
notebook's `lmcourse`: the function imports a fresh copy of the package from a folder the grader
wrote after the notebook's cells had run, checks each exercise's function with it, and writes the
verdicts to a file with a random name, tagged with the run's random nonce. `lmcourse.grading`
says what this does and does not defend against.
"""


def lmcourse_grade_in_kernel(params_json: str, namespace: dict) -> None:
    """Check each exercise's function in `namespace` with a fresh copy of lmcourse; write the verdicts."""
    import importlib
    import importlib.machinery
    import importlib.util
    import json
    import os
    import signal
    import sys
    import threading

    p = json.loads(params_json)
    verdicts: dict = {}

    def save(complete: bool) -> None:
        tmp = p["out"] + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"nonce": p["nonce"], "complete": complete, "verdicts": verdicts}, f)
        os.replace(tmp, p["out"])

    class CheckTimeout(BaseException):
        """The check of one exercise ran past its limit (a BaseException: the checker catches
        Exception around the learner's code)."""

    def on_alarm(signum, frame):
        raise CheckTimeout()

    def ours(name: str) -> bool:
        return name == "lmcourse" or name.startswith("lmcourse.")

    class FreshCourse:
        """Finds lmcourse and lmcourse.* in the grader's copy only, never through the path hooks
        or import hooks the notebook may have installed."""

        @staticmethod
        def find_spec(name, path=None, target=None):
            if not ours(name):
                return None
            base = os.path.join(p["package_parent"], *name.split("."))
            if os.path.isfile(os.path.join(base, "__init__.py")):
                return importlib.util.spec_from_file_location(
                    name, os.path.join(base, "__init__.py"), submodule_search_locations=[base])
            if os.path.isfile(base + ".py"):
                return importlib.util.spec_from_file_location(name, base + ".py")
            raise ModuleNotFoundError(f"No module named {name!r} in the course", name=name)

    # a time limit per exercise where the platform has one (Unix, code on the main thread)
    alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    saved = {name: sys.modules.pop(name) for name in [n for n in sys.modules if ours(n)]}
    saved_meta_path = list(sys.meta_path)
    standard = [FreshCourse, importlib.machinery.BuiltinImporter,
                importlib.machinery.FrozenImporter, importlib.machinery.PathFinder]
    sys.meta_path[:] = standard + [f for f in saved_meta_path if f not in standard]
    previous_alarm = signal.signal(signal.SIGALRM, on_alarm) if alarm else None
    try:
        importlib.import_module("lmcourse")
        registry = importlib.import_module("lmcourse.exercises")
        for module in p["modules"]:  # the lesson's exercises only: fast
            importlib.import_module(f"lmcourse.exercises.{module}")
        known = registry._REGISTRY
        if any(key not in known for key, _ in p["exercises"]):
            known = registry.exercises()  # registered elsewhere: load every lesson's exercises
        checker = importlib.import_module("lmcourse.checker")
        statuses = {checker.PASSED: "passed", checker.WRONG: "wrong", checker.TODO: "not done"}

        def verdict(key: str, name: str) -> dict:
            exercise = known.get(key)
            if exercise is None:
                return {"status": "error", "detail": f"the course has no exercise {key!r}"}
            fn = namespace.get(name)
            if fn is None:
                return {"status": "missing", "detail": f"no function `{name}` in the notebook"}
            if not callable(fn):
                return {"status": "missing",
                        "detail": f"`{name}` is a {type(fn).__name__}, not a function"}
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, p["check_timeout"])
            try:
                result = checker.evaluate(exercise, fn)
            except CheckTimeout:
                return {"status": "error",
                        "detail": f"checking it took more than {p['check_timeout']:g} s"}
            except Exception as e:
                return {"status": "error", "detail": f"the check failed: {type(e).__name__}: {e}"}
            finally:
                if alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            status = statuses.get(result.status, "error")
            return {"status": status, "detail": result.hint if status == "wrong" else "",
                    "message": result.message}

        for key, name in p["exercises"]:
            verdicts[key] = verdict(key, name)
            save(False)
    finally:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL if previous_alarm is None else previous_alarm)
        sys.meta_path[:] = saved_meta_path
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)
    save(True)

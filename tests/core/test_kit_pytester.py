"""The conformance kit itself, run by pytest inside pytest (the ``pytester`` fixture).

Each run is a separate pytest process, as a backend author's run would be.
"""

from __future__ import annotations

import pytest

from rhapsody.testing import FEATURES, BackendConformance
from rhapsody.testing.plugin import parse_backend_options

pytest_plugins = ["pytester"]


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """test name -> PASSED/FAILED/SKIPPED/ERROR, from ``-rA`` short summary lines."""
    seen: dict[str, str] = {}
    for line in result.outlines:
        for word in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
            if line.startswith(word + " ") and "::" in line:
                seen[line.split("::")[-1].split(" ")[0]] = word
    return seen


def test_noop_fails_what_it_does_not_do_and_skips_what_it_declares(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_noop_kit='''
        from rhapsody.testing import BackendConformance, FEATURES

        class TestNoop(BackendConformance):
            backend_name = "noop"
            unsupported = {f: "a dry run executes nothing" for f in FEATURES if f != "function"}
    ''')
    result = pytester.runpytest_subprocess("-rA", "-p", "no:cacheprovider")
    seen = outcomes(result)
    assert {name for name, word in seen.items() if word == "FAILED"} == {
        "test_sync_function_returns_value",                 # return_value stays None
        "test_function_exception_reaches_future_with_its_type",  # nothing raised
        "test_many_tasks_all_complete",
        "test_unknown_backend_option_is_rejected_by_name",  # noop accepts any option
    }
    assert seen["test_unknown_backend_name_is_rejected_at_submit"] == "PASSED"
    assert seen["test_another_event_loop_is_refused_at_once"] == "PASSED"
    result.assert_outcomes(passed=2, failed=4, skipped=19)
    for feature in ("executable", "async_function"):
        result.stdout.fnmatch_lines([f"SKIPPED * noop does not support {feature}: a dry run executes nothing"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_backend_that_hides_failed_exits_is_caught(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_lying_kit='''
        from rhapsody.builtin.concurrent import ConcurrentBackend
        from rhapsody.testing import BackendConformance

        class LyingBackend(ConcurrentBackend):
            """Reports executables that exited non-zero as DONE."""
            def report(self, updates):
                super().report([(t, "DONE" if s == "FAILED" and t.get("exit_code") else s)
                                for t, s in updates])

        class TestLying(BackendConformance):
            backend_name = "concurrent"
            def make_backend(self, request):
                return LyingBackend(max_workers=2)
    ''')
    result = pytester.runpytest_subprocess(
        "-rA", "-p", "no:cacheprovider",
        "-k", "nonzero_exit or executable_output or test_sync_function or exception_reaches")
    seen = outcomes(result)
    assert seen == {
        "test_nonzero_exit_raises_task_execution_error": "FAILED",
        "test_executable_output_and_exit_code": "PASSED",
        "test_sync_function_returns_value": "PASSED",
        "test_function_exception_reaches_future_with_its_type": "PASSED",
    }
    result.stdout.fnmatch_lines(["*DID NOT RAISE*TaskExecutionError*"])


def test_a_class_without_backend_name_is_skipped(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_unnamed_kit='''
        from rhapsody.testing import BackendConformance

        class TestUnnamed(BackendConformance):
            pass
    ''')
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=25)
    result.stdout.fnmatch_lines(["*TestUnnamed names no backend_name*"])


def test_suite_against_concurrent_passes(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pyargs", "rhapsody.testing.suite",
                                           "--rhapsody-backend=concurrent",
                                           "--rhapsody-backend-option", "max_workers=2",
                                           "--rhapsody-backend-option", "max_subprocesses=4")
    # Threads cannot lose a worker without losing the test run: the two worker-loss tests skip.
    result.assert_outcomes(passed=23, skipped=2)


def test_suite_without_a_backend_skips_with_the_reason(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-rs", "-p", "no:cacheprovider", "--pyargs", "rhapsody.testing.suite")
    result.assert_outcomes(skipped=25)
    result.stdout.fnmatch_lines(["*no backend chosen: pass --rhapsody-backend=NAME*"])


@pytest.mark.parametrize(("args", "message"), [
    (["--rhapsody-backend-option", "max_workers"],
     "ERROR: --rhapsody-backend-option expects KEY=VALUE, got 'max_workers'"),
    (["--rhapsody-backend-option", "=2"], "ERROR: --rhapsody-backend-option expects KEY=VALUE, got '=2'"),
    (["--rhapsody-backend-option", "workers=2"],
     "ERROR: --rhapsody-backend=concurrent: TypeError: backend 'concurrent' (ConcurrentBackend) has no "
     "option 'workers'; its options are: executor, max_workers, processes, max_subprocesses, cores, "
     "gpus, memory, mpi_launcher, name"),
])
def test_suite_with_a_bad_backend_option_is_a_usage_error(
    pytester: pytest.Pytester, args: list[str], message: str
) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pyargs", "rhapsody.testing.suite",
                                           "--rhapsody-backend=concurrent", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_suite_with_an_unknown_backend_is_a_usage_error(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pyargs", "rhapsody.testing.suite",
                                           "--rhapsody-backend=nosuch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --rhapsody-backend=nosuch: BackendUnavailableError: "
                                 "no backend named 'nosuch' is installed*"])


def test_parse_backend_options_reads_json_else_strings() -> None:
    assert parse_backend_options(["n=2", "flag=true", "cfg={\"a\": [1]}", "name=x y", "empty="]) == {
        "n": 2, "flag": True, "cfg": {"a": [1]}, "name": "x y", "empty": ""}


def test_require_rejects_an_unknown_feature_name() -> None:
    with pytest.raises(ValueError, match=r"unknown conformance feature 'gpu'"):
        BackendConformance().require("gpu")
    assert "cancel_queued" in FEATURES


def test_tests_of_a_task_kind_the_backend_lacks_are_skipped_with_that_reason(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_functions_only_kit='''
        from rhapsody.builtin.concurrent import ConcurrentBackend
        from rhapsody.testing import BackendConformance

        class FunctionsOnly(ConcurrentBackend):
            task_kinds = frozenset({"function"})

        class TestFunctionsOnly(BackendConformance):
            backend_name = "concurrent"
            def make_backend(self, request):
                return FunctionsOnly(max_workers=2)
    ''')
    result = pytester.runpytest_subprocess("-rA", "-p", "no:cacheprovider")
    seen = outcomes(result)
    # No feature listed in unsupported: task_kinds alone skips the 14 executable tests (and
    # threads cannot lose a worker: the 2 worker-loss tests skip too).
    assert {name for name, word in seen.items() if word == "PASSED"} == {
        "test_sync_function_returns_value", "test_async_function_returns_value",
        "test_function_exception_reaches_future_with_its_type", "test_many_tasks_all_complete",
        "test_unknown_backend_option_is_rejected_by_name",  # with a function task, here
        "test_unknown_backend_name_is_rejected_at_submit", "test_another_event_loop_is_refused_at_once",
        # with function tasks, which concurrent refuses any resources beyond one worker
        "test_resources_each_key_is_honoured_or_refused", "test_resources_never_offered_fail_fast",
    }
    result.assert_outcomes(passed=9, skipped=16)
    result.stdout.fnmatch_lines(["SKIPPED [[]14] * concurrent does not run executable tasks (its task_kinds: function)"])


def test_suite_skips_the_features_named_on_the_command_line(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-rA", "-p", "no:cacheprovider", "--pyargs", "rhapsody.testing.suite",
                                           "--rhapsody-backend=concurrent",
                                           "--rhapsody-backend-option", "max_workers=2",
                                           "--rhapsody-unsupported=cwd,env", "--rhapsody-unsupported", "shell",
                                           "-k", "cwd or env or shell or sync_function")
    result.assert_outcomes(passed=2, skipped=3)  # sync and async functions; cwd, env, shell
    result.stdout.fnmatch_lines(
        ["SKIPPED * concurrent does not support cwd: declared unsupported with --rhapsody-unsupported"])


def test_suite_refuses_an_unknown_feature_name(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--pyargs", "rhapsody.testing.suite",
                                           "--rhapsody-backend=concurrent", "--rhapsody-unsupported=cwd,gpus")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["ERROR: --rhapsody-unsupported: unknown feature 'gpus'; the features are: "
                                 "async_function, cancel_queued, *, worker_loss"])

"""
Read a subunit v2 stream (what C{tempest run --subunit} writes) and print
one JSON object: test id -> {"status", "reason", "details"}.

    .venv-tempest/bin/python tests/tempest_results.py RESULTS.subunit

It runs under Tempest's virtualenv, which has python-subunit and testtools
(the project's does not), so L{tests.test_tempest} reads the results without
either. C{status} is subunit's: success, fail, skip, xfail, uxsuccess,
exists; C{reason} is a skip's reason; C{details} is the traceback (and any
other text attachment, the end of each) of a test that did not pass, cut
to 8 KiB.
"""

import json
import sys

import subunit  # type: ignore[import-not-found]
import testtools  # type: ignore[import-not-found]

MAX_DETAILS = 4096


def main() -> None:
    results: dict[str, dict[str, str]] = {}

    def on_test(test: dict) -> None:
        if test["status"] == "exists":  # a listing, not a run
            return
        texts = {}
        for name, content in test["details"].items():
            if content.content_type.type == "text":
                texts[name] = "".join(content.iter_text())
        reason = texts.pop("reason", "")
        # The traceback first (its start and end), then the end of the log.
        parts = [texts.pop("traceback", "")]
        if test["status"] == "fail":
            parts += [text[-MAX_DETAILS:] for text in texts.values()]
        details = "\n".join(part for part in parts if part)
        results[test["id"]] = {
            "status": test["status"],
            "reason": reason.strip(),
            "details": details[: 2 * MAX_DETAILS],
        }

    with open(sys.argv[1], "rb") as stream:
        case = subunit.ByteStreamToStreamResult(stream, non_subunit_name="stdout")
        result = testtools.StreamToDict(on_test)
        result.startTestRun()
        try:
            case.run(result)
        finally:
            result.stopTestRun()
    json.dump(results, sys.stdout, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()

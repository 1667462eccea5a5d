"""Writes the documents a benchmark renders from its committed records, or, with GFN_DOCS_CHECK=1,
compares them with the committed files instead and exits non-zero when one differs (the check that
python/test.sh runs, like `cargo xtask results --check` for the Rust suites)."""

import atexit
import os
import pathlib
import sys

CHECK = os.environ.get("GFN_DOCS_CHECK") == "1"
_stale = []


def write(path, text):
    path = pathlib.Path(path)
    if not CHECK:
        path.write_text(text)
    elif not path.exists() or path.read_text() != text:
        _stale.append(str(path))


@atexit.register
def _report():
    if _stale:
        print("documents differ from what their records render: " + ", ".join(_stale)
              + " (run the render command and commit)", file=sys.stderr)
        os._exit(1)

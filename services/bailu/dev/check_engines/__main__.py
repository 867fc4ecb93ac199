"""`python -m bailu.dev.check_engines [--install] [--engines vllm,sglang,lmdeploy]` (`make check-engines`)."""

from __future__ import annotations

import argparse
import json
import sys

from bailu.dev.check_engines import install, report
from bailu.worker.engines.server.versions import PINS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bailu.dev.check_engines", description=__doc__)
    parser.add_argument("--engines", default=",".join(PINS), help="comma-separated engines (default: all pinned)")
    parser.add_argument("--install", action="store_true", help="install missing engine venvs first")
    parser.add_argument("--no-write", action="store_true", help="print the report; write neither results nor docs")
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    results = []
    for engine in engines:
        if args.install:
            install.install(engine)
        print(f"checking {engine} {PINS[engine].version} ...", flush=True)
        result = report.check_engine(engine)
        for check in result["checks"]:
            print(f"  {check['check']:<15} {check['status']}", flush=True)
            for failure in check["failures"]:
                print(f"    - {failure}", flush=True)
        results.append(result)
    full = report.full_report(results)
    if args.no_write:
        print(json.dumps(full, indent=1))
    else:
        report.RESULTS.write_text(json.dumps(full, indent=1) + "\n")
        report.write_docs(full)
        print(f"wrote {report.RESULTS.relative_to(install.ROOT)} and the table in docs/engines.md")
    return 0 if report.passed(full) else 1


if __name__ == "__main__":
    sys.exit(main())

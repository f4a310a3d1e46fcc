#!/usr/bin/env python3
"""Runs Tally's ClickHouse SQL on a current ClickHouse engine, in-process (PyPI `chdb-core`).

Reads a plan as JSON on stdin: {"setup": [sql, ...], "checks": [{"sql", "expect" | "contains"
and/or "excludes"}]}.
Runs every setup statement, then every check (CSV output); prints each result and exits 1 on the
first statement that fails or check that does not match. Driven by tests/tests/current_clickhouse.rs.
"""
import json
import sys
import tempfile

from chdb import session


def main() -> int:
    plan = json.load(sys.stdin)
    # The engine may still be merging parts when the checks end: close it before the scratch
    # folder goes, and let the removal skip what a background merge left.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as path:
        s = session.Session(path)
        try:
            return run(s, plan)
        finally:
            s.close()


def run(s, plan) -> int:
    """Runs the setup, then each check; 0 when every check holds."""
    print("clickhouse", s.query("SELECT version()", "CSV").bytes().decode().strip())
    for sql in plan["setup"]:
        try:
            s.query(sql)
        except Exception as e:  # noqa: BLE001 - report any engine error with its statement
            print(f"FAILED setup statement:\n{sql}\n{e}")
            return 1
    for check in plan["checks"]:
        try:
            got = s.query(check["sql"], "CSV").bytes().decode()
        except Exception as e:  # noqa: BLE001
            print(f"FAILED query:\n{check['sql']}\n{e}")
            return 1
        if "expect" in check and got != check["expect"]:
            print(f"MISMATCH:\n{check['sql']}\n got: {got!r}\nwant: {check['expect']!r}")
            return 1
        if "contains" in check and check["contains"] not in got:
            print(f"MISMATCH:\n{check['sql']}\n got: {got!r}\nwant it to contain: {check['contains']!r}")
            return 1
        if "excludes" in check and check["excludes"] in got:
            print(f"MISMATCH:\n{check['sql']}\n got: {got!r}\nwant it without: {check['excludes']!r}")
            return 1
        print("ok:", " ".join(check["sql"].split())[:100])
    return 0


if __name__ == "__main__":
    sys.exit(main())

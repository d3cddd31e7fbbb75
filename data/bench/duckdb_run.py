"""Runs one benchmark query on DuckDB for `sessionql bench`.

Usage: duckdb_run.py RUNS SETUP_SQL QUERY_SQL
Runs SETUP_SQL once (views over the Parquet files), then QUERY_SQL RUNS
times, and prints one JSON line: wall seconds of each run, the process's
peak memory in MiB, and the first row of the last result.
"""

import json
import resource
import sys
import time

import duckdb


def main() -> None:
    runs = int(sys.argv[1])
    setup_sql, query_sql = sys.argv[2], sys.argv[3]
    connection = duckdb.connect()
    for statement in setup_sql.split(";\n"):
        if statement.strip():
            connection.execute(statement)
    times = []
    first_row = None
    for _ in range(runs):
        started = time.perf_counter()
        rows = connection.execute(query_sql).fetchall()
        times.append(time.perf_counter() - started)
        first_row = [str(value) for value in rows[0]] if rows else []
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"times": times, "peak_mib": peak_mib, "first_row": first_row}))


if __name__ == "__main__":
    main()

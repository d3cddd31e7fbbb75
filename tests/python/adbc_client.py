"""A notebook's view of sessionql: the ADBC Flight SQL driver against a running
`sessionql serve`. Prints one JSON object with what it saw; the Rust test
`tests/flight.rs` compares it with the CLI's answers for the same SQL."""

import json
import sys
import warnings

import adbc_driver_flightsql.dbapi as flightsql

warnings.simplefilter("ignore")  # the driver warns that autocommit cannot be disabled

address = sys.argv[1]
seen = {}
with flightsql.connect(f"grpc://{address}") as conn:
    cur = conn.cursor()
    cur.execute("SELECT channel_type, count(*) AS sessions FROM sessions GROUP BY 1 ORDER BY 2 DESC, 1")
    table = cur.fetch_arrow_table()
    seen["channels"] = [[channel, count] for channel, count in zip(*table.to_pydict().values())]

    cur.execute("SELECT count(*) AS n FROM sessions WHERE session_duration > ?", (10,))
    seen["longer_than_10s"] = cur.fetch_arrow_table().to_pydict()["n"][0]

    objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
    tables = {}
    for catalog in objects:
        for schema in catalog["catalog_db_schemas"] or []:
            for table in schema["db_schema_tables"] or []:
                columns = [column["column_name"] for column in table["table_columns"] or []]
                tables[table["table_name"]] = columns
    seen["tables"] = {name: tables.get(name) for name in ["events", "sessions", "session_events"]}
    cur.close()
print(json.dumps(seen))

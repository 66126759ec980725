"""The parameter tables of docs/ros.md and docs/therapy.md are generated from the nodes'
declarations and config/therapy.yaml (`python -m fer_ros.ros.params docs/ros.md docs/therapy.md`):
the docs must hold exactly what the code declares."""

from pathlib import Path

from fer_ros.ros.params import DOC_TABLES, doc_tables

REPO = Path(__file__).resolve().parents[1]


def test_parameter_tables_are_generated_from_the_declarations():
    docs = (REPO / "docs" / "ros.md").read_text() + (REPO / "docs" / "therapy.md").read_text()
    tables = doc_tables()
    assert set(tables) == set(DOC_TABLES)
    for name, table in tables.items():
        start, end = f"<!-- params:{name} -->", f"<!-- /params:{name} -->"
        assert start in docs and end in docs, f"no generated table for {name}"
        got = docs[docs.index(start) + len(start):docs.index(end)].strip()
        assert got == table, (f"the {name} table is stale: run python -m fer_ros.ros.params "
                              "docs/ros.md docs/therapy.md")
        for row in table.splitlines()[2:]:  # every declared parameter has a row with its description
            assert row.count("|") >= 6

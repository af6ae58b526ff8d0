"""The schema under Alembic: old databases are upgraded with their rows, and the migrations match the models.

Every test runs on SQLite and on PostgreSQL (`db_url`).
"""

from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, insert, text

from corral.control import migrations
from corral.control.store import Base, Job, Store
from corral.errors import UserError

# What corral's `metadata.create_all` made before Alembic (revision 0001), as it emitted it; frozen
# here so that this test keeps meaning "a database of that day" after the models change.
SCHEMA_BEFORE_ALEMBIC = """
CREATE TABLE users (
    id {serial} NOT NULL, name VARCHAR(64) NOT NULL, token_hash VARCHAR(64) NOT NULL,
    is_admin BOOLEAN NOT NULL, created FLOAT NOT NULL, PRIMARY KEY (id), UNIQUE (name));
CREATE UNIQUE INDEX ix_users_token_hash ON users (token_hash);
CREATE TABLE jobs (
    id {serial} NOT NULL, name VARCHAR(128) NOT NULL, "user" VARCHAR(64) NOT NULL, spec JSON NOT NULL,
    state VARCHAR(16) NOT NULL, reason VARCHAR(64) NOT NULL, priority INTEGER NOT NULL,
    min_gpus INTEGER NOT NULL, max_gpus INTEGER NOT NULL, gpus INTEGER NOT NULL, allocation JSON NOT NULL,
    submit_time FLOAT NOT NULL, start_time FLOAT, run_start FLOAT, end_time FLOAT,
    attained_service FLOAT NOT NULL, run_time FLOAT NOT NULL, restarts INTEGER NOT NULL,
    preemptions INTEGER NOT NULL, resizes INTEGER NOT NULL, attempt INTEGER NOT NULL, exit_code INTEGER,
    run_ref VARCHAR(256) NOT NULL, intent VARCHAR(16) NOT NULL, intent_time FLOAT, accounted_until FLOAT,
    last_log TEXT NOT NULL, step INTEGER NOT NULL, observations JSON NOT NULL, progress FLOAT,
    job_token_hash VARCHAR(64) NOT NULL, PRIMARY KEY (id));
CREATE INDEX ix_jobs_user ON jobs ("user");
CREATE INDEX ix_jobs_state ON jobs (state);
CREATE TABLE events (
    id {serial} NOT NULL, job_id INTEGER NOT NULL, time FLOAT NOT NULL, src VARCHAR(16) NOT NULL,
    dst VARCHAR(16) NOT NULL, cause TEXT NOT NULL, data JSON NOT NULL, PRIMARY KEY (id),
    FOREIGN KEY(job_id) REFERENCES jobs (id));
CREATE INDEX ix_events_job_id ON events (job_id);
CREATE TABLE metrics (
    id {serial} NOT NULL, job_id INTEGER NOT NULL, time FLOAT NOT NULL, step INTEGER NOT NULL,
    "values" JSON NOT NULL, PRIMARY KEY (id), FOREIGN KEY(job_id) REFERENCES jobs (id));
CREATE INDEX ix_metrics_job_id ON metrics (job_id);
INSERT INTO users (name, token_hash, is_admin, created) VALUES ('admin', 'h', TRUE, 1.0);
INSERT INTO jobs VALUES (1, 'old', 'alice', '{{"name": "old", "entrypoint": "python train.py"}}', 'SUCCEEDED', '', 5,
    1, 2, 2, '{{}}', 10.0, 11.0, NULL, 20.0, 18.0, 9.0, 0, 1, 0, 2, 0, '', '', NULL, 20.0, 'done', 40,
    '{{"1,2,32": [0.5, 3]}}', 1.0, '');
INSERT INTO events (job_id, time, src, dst, cause, data) VALUES (1, 10.0, '', 'PENDING', 'submitted', '{{}}');
INSERT INTO metrics (job_id, time, step, "values") VALUES (1, 12.0, 40, '{{"loss": 0.25}}');
"""


def make_old_database(url: str) -> None:
    """A database as corral made it before Alembic, with an admin, a finished job, its event and a metric."""
    engine = create_engine(url)
    serial = "SERIAL" if engine.dialect.name == "postgresql" else "INTEGER"
    with engine.begin() as conn:
        for statement in SCHEMA_BEFORE_ALEMBIC.format(serial=serial).split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)
        if engine.dialect.name == "postgresql":  # the row above was inserted with its id: move the sequence on
            conn.exec_driver_sql("SELECT setval(pg_get_serial_sequence('jobs', 'id'), 1)")
    engine.dispose()


def test_a_database_made_before_alembic_is_upgraded_and_keeps_its_rows(db_url: str) -> None:
    make_old_database(db_url)
    store = Store(db_url)
    try:
        with store.engine.connect() as conn:
            assert migrations.current(conn) == migrations.head()
        old = store.get_job(1)
        assert old is not None and (old.name, old.state, old.gpus, old.step) == ("old", "SUCCEEDED", 2, 40)
        assert old.spec["entrypoint"] == "python train.py" and old.observations == {"1,2,32": [0.5, 3]}
        assert [(e.dst, e.cause) for e in store.events(1)] == [("PENDING", "submitted")]
        assert [m.values for m in store.metrics(1)] == [{"loss": 0.25}]
        assert store.has_admin()
        new = store.add_job({"name": "new", "entrypoint": "x"}, "bob")
        assert new.id == 2 and [j.name for j in store.list_jobs()] == ["new", "old"]
        # Revision 0002: ids past 32 bits (PostgreSQL's INTEGER before it), sequence included.
        with store.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SELECT setval(pg_get_serial_sequence('jobs', 'id'), {2**31})")
            else:
                conn.execute(insert(Job.__table__).values(**_row(2**31)))
        big = store.add_job({"name": "big", "entrypoint": "x"}, "bob")
        assert big.id == 2**31 + 1 and store.get_job(big.id).name == "big"
        store.add_metrics(big.id, 1, {"loss": 1.0})
        assert [e.job_id for e in store.events(big.id)] == [big.id]
    finally:
        store.close()


def test_the_migrations_make_exactly_the_models_schema(db_url: str) -> None:
    """A change of the models without its migration fails here: `make migration m="..."` writes one."""
    store = Store(db_url)  # an empty database: every revision from the first
    try:
        with store.engine.connect() as conn:
            assert migrations.current(conn) == migrations.head()
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    finally:
        store.close()


def test_stores_opened_at_once_on_an_empty_database_migrate_it_once(db_url: str) -> None:
    stores: list[Store] = []
    errors: list[Exception] = []
    barrier = threading.Barrier(4)

    def open_store() -> None:
        barrier.wait()
        try:
            stores.append(Store(db_url))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == [] and len(stores) == 4
        with stores[0].engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM alembic_version")) == 1
            assert migrations.current(conn) == migrations.head()
        job = stores[1].add_job({"name": "a", "entrypoint": "x"}, "alice")
        assert stores[2].get_job(job.id) is not None
    finally:
        for store in stores:
            store.close()


def test_a_database_newer_than_this_corral_is_refused(db_url: str) -> None:
    Store(db_url).close()
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(UserError, match="revision 9999, which this corral does not know"):
        Store(db_url)


def _row(job_id: int) -> dict:
    return dict(
        id=job_id,
        name="filler",
        user="bob",
        spec={},
        state="CANCELLED",
        reason="",
        priority=0,
        min_gpus=1,
        max_gpus=1,
        gpus=1,
        allocation={},
        submit_time=0.0,
        attained_service=0.0,
        run_time=0.0,
        restarts=0,
        preemptions=0,
        resizes=0,
        attempt=0,
        run_ref="",
        intent="",
        last_log="",
        step=0,
        observations={},
        job_token_hash="",
    )

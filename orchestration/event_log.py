"""Dagster's SQLite event log, with its connections kept open (the event log of privdom's instance config).

Dagster's `SqliteEventLogStorage` keeps one SQLite file per run plus an index file, and opens a new SQLAlchemy
engine and SQLite connection for every write, then closes it: ~11 ms per event on this project's 2-core
machine, most of it making the engine, compiling the INSERT again (SQLAlchemy caches compiled statements per
engine) and the close, which checkpoints the write-ahead log. A `privdom run` over a year of history writes
~1,700 events (a materialization per daily partition of each raw source, one per dbt node and check), so
about 19 s of a run went into its own log.

This subclass changes only how connections are made: one engine per file with one connection that stays
open (at most `KEPT_FILES` files at a time, the least recently used closed first), used under the storage's
own lock exactly as Dagster's code uses a fresh one. What is stored, where, and in which transactions is
Dagster's code, unchanged. After a write to a run's file its write-ahead log is checkpointed into the file,
because Dagster's UI follows a run live by watching that file for changes (`SqliteEventLogStorageWatchdog`).
A kept connection whose file was deleted or replaced since (`dagster run wipe`, here or in another process)
is closed and the path opened again, instead of writing on into a deleted file.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

# files with an open connection: a run writes its own file and the index; the UI reads a few runs at once
KEPT_FILES = 8


class PrivdomSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` (same files, same schema, same config: `base_dir`) that reuses one open
    connection per file instead of opening and closing one per write."""

    def __init__(self, base_dir: str, inst_data: Any = None):
        # shard -> (engine, the file's (device, inode) once it exists)
        self._engines: OrderedDict[str, tuple[Engine, tuple[int, int] | None]] = OrderedDict()
        self._engines_lock = threading.Lock()
        super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> PrivdomSqliteEventLogStorage:  # ty: ignore[invalid-method-override]
        return cls(inst_data=inst_data, **config_value)

    def _file_identity(self, shard: str) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path_for_shard(shard))
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _engine(self, shard: str) -> Engine:
        with self._engines_lock:
            cached = self._engines.get(shard)
            if cached is not None:
                engine, identity = cached
                if identity is None or self._file_identity(shard) == identity:
                    self._engines.move_to_end(shard)
                    return engine
                # The file was deleted or replaced since (a wipe, in this process or another): its connection
                # would go on writing to a file nobody reads. Open the path again, creating it as Dagster does.
                del self._engines[shard]
                engine.dispose()
                self._initialized_dbs.discard(shard)
            engine = create_engine(
                self.conn_string_for_shard(shard),
                # one connection per file, shared by the threads that take the storage's lock in turn
                poolclass=StaticPool,
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
            )
            self._engines[shard] = (engine, None)
            while len(self._engines) > KEPT_FILES:
                _, (oldest, _) = self._engines.popitem(last=False)
                oldest.dispose()
            return engine

    def _remember_file(self, shard: str, engine: Engine) -> None:
        with self._engines_lock:
            cached = self._engines.get(shard)
            if cached is not None and cached[0] is engine and cached[1] is None:
                self._engines[shard] = (engine, self._file_identity(shard))

    @contextlib.contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:  # the same steps as Dagster's, on a kept engine
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                self._remember_file(shard, engine)  # the file exists once connected
                sqlite = conn.connection.dbapi_connection
                changes = sqlite.total_changes
                with conn.begin():
                    yield conn
                if shard != INDEX_SHARD_NAME and sqlite.total_changes != changes:
                    # Into the run's file, so a UI watching it sees the new events now, as it did when each
                    # write closed its connection. PASSIVE: never waits for a reader. Reads need none.
                    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")

    def close_connections(self) -> None:
        with self._engines_lock:
            engines = [engine for engine, _ in self._engines.values()]
            self._engines.clear()
        for engine in engines:
            engine.dispose()

    def wipe(self) -> None:
        with self._db_lock:
            self.close_connections()  # the run files are deleted next (a file reopened meanwhile is seen as replaced)
        super().wipe()

    def dispose(self) -> None:
        super().dispose()  # stops the file watcher first: its callbacks read through these connections
        with self._db_lock:
            self.close_connections()

"""The trace store: one SQLite file in WAL mode, shared by training runs and pipeline runs.

Each trace is one row: summary columns (indexed, for filtering and sorting) plus the full trace
JSON in `body`. Every write is one transaction, so a writer killed mid-batch leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
import urllib.parse
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator, NamedTuple

from reasoner.errors import ReasonerError
from reasoner.traces.model import Trace, finite_or_none
from reasoner.traces.schema import TraceValidationError, validate_trace_dict

APPLICATION_ID = 0x52534E52  # "RSNR" in the SQLite header: tells our files from foreign ones
STORE_FORMAT = 1  # PRAGMA user_version; bump with a migration when the table layout changes
DEFAULT_FILENAME = "traces.db"

_DDL = """
CREATE TABLE IF NOT EXISTS traces (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    task TEXT NOT NULL,
    model TEXT,
    created REAL NOT NULL,
    correct INTEGER,
    reward REAL,
    completion_tokens INTEGER,
    completion_chars INTEGER NOT NULL,
    preview TEXT,
    metadata TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_created ON traces(created);
CREATE INDEX IF NOT EXISTS traces_source ON traces(source, created);
CREATE INDEX IF NOT EXISTS traces_task ON traces(task, created);
CREATE INDEX IF NOT EXISTS traces_model ON traces(model, created);
CREATE INDEX IF NOT EXISTS traces_correct ON traces(correct, created);
CREATE INDEX IF NOT EXISTS traces_reward ON traces(reward);
"""
# Metadata the UI filters and groups by (training run id, GRPO group): expression indexes, created on any
# store opened for writing that lacks them (older stores too). Queries must use these exact expressions.
RUN_EXPR = "json_extract(metadata, '$.run')"
GROUP_EXPR = "json_extract(metadata, '$.group')"
_META_INDEXES = {
    "traces_run": f"CREATE INDEX IF NOT EXISTS traces_run ON traces({RUN_EXPR}, created)",
    "traces_group": f"CREATE INDEX IF NOT EXISTS traces_group ON traces({GROUP_EXPR})",
    "traces_preview": "CREATE INDEX IF NOT EXISTS traces_preview ON traces(preview)",  # the same problem elsewhere
    # Every summary filter in one narrow index: counting matches of several filters at once (the UI's
    # "wrong answers of run X with reward <= 0.5") scans this instead of looking up each row's 4 kB body.
    "traces_filters": "CREATE INDEX IF NOT EXISTS traces_filters ON traces(source, correct, task, model, reward, "
                      f"created, {RUN_EXPR})",
}
_SIMPLE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COLUMNS = ("id", "source", "task", "model", "created", "correct", "reward", "completion_tokens",
            "completion_chars", "preview", "metadata", "body")
_SUMMARY_COLUMNS = ", ".join(_COLUMNS[:-1])
SORT_KEYS = {
    "created": "created", "reward": "reward", "task": "task", "source": "source", "model": "model",
    "tokens": "completion_tokens", "length": "completion_chars",
}
_ID_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]+$")


class TraceStoreError(ReasonerError):
    """The store file is missing, corrupt, foreign, or cannot be written."""


class TraceNotFound(ReasonerError):
    """No trace (or more than one) matches an id or id prefix."""


def default_store_path() -> Path:
    """$REASONER_HOME/traces.db when REASONER_HOME is set, else ./runs/traces.db."""
    home = os.environ.get("REASONER_HOME")
    return (Path(home) if home else Path("runs")) / DEFAULT_FILENAME


def resolve_store_path(path: str | os.PathLike | None) -> Path:
    """None means the default; a directory (e.g. a run directory) means traces.db inside it."""
    if path is None:
        return default_store_path()
    path = Path(path).expanduser()
    return path / DEFAULT_FILENAME if path.is_dir() else path


@dataclass
class TraceFilter:
    """Filters shared by the Python API and `reasoner traces list/export`. None means 'any'.

    source/task/model accept shell-style wildcards (`math*`); text is a case-insensitive
    substring search over the whole trace; metadata matches top-level metadata keys exactly.
    """
    ids: list[str] | None = None
    run: str | None = None  # metadata "run": the training run id (`reasoner train` sets it)
    source: str | None = None
    task: str | None = None
    model: str | None = None
    correct: bool | None = None
    min_reward: float | None = None
    max_reward: float | None = None
    since: datetime | None = None
    until: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    text: str | None = None
    sort: str = "created"
    descending: bool = True
    limit: int | None = None
    offset: int = 0

    def coverable(self) -> int:
        """How many filters are set, when all of them are columns of the traces_filters index (else 0)."""
        if self.ids or self.text or any(not _SIMPLE_KEY.match(key) or key != "run" for key in self.metadata):
            return 0
        return sum(value is not None for value in (self.source, self.task, self.model, self.correct, self.min_reward,
                                                   self.max_reward, self.since, self.until, self.run)) + len(self.metadata)

    def where(self) -> tuple[str, list]:
        clauses, params = [], []
        if self.ids:
            clauses.append(f"id IN ({', '.join('?' * len(self.ids))})")
            params += list(self.ids)
        for column in ("source", "task", "model"):
            value = getattr(self, column)
            if value is not None:
                clauses.append(f"{column} GLOB ?" if any(c in value for c in "*?[") else f"{column} = ?")
                params.append(value)
        if self.correct is not None:
            clauses.append("correct = ?")
            params.append(int(self.correct))
        for bound, op in ((self.min_reward, ">="), (self.max_reward, "<=")):
            if bound is not None:
                clauses.append(f"reward {op} ?")
                params.append(float(bound))
        for moment, op in ((self.since, ">="), (self.until, "<")):
            if moment is not None:
                clauses.append(f"created {op} ?")
                params.append(_epoch(moment))
        if self.run is not None:
            clauses.append(f"{RUN_EXPR} = ?")
            params.append(self.run)
        for key, value in self.metadata.items():
            if _SIMPLE_KEY.match(key):  # inlined, so the expression indexes (run, group) can answer it
                clauses.append(f"json_extract(metadata, '$.{key}') = ?")
                params.append(value)
            else:
                clauses.append("json_extract(metadata, ?) = ?")
                params += [f'$."{key}"', value]
        if self.text:
            clauses.append(r"body LIKE ? ESCAPE '\'")
            params.append("%" + re.sub(r"([\\%_])", r"\\\1", json.dumps(self.text)[1:-1]) + "%")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def order_limit(self) -> tuple[str, list]:
        if self.sort not in SORT_KEYS:
            raise ReasonerError(f"cannot sort by {self.sort!r}; choose one of {', '.join(SORT_KEYS)}")
        column = SORT_KEYS[self.sort]
        # SQLite sorts NULL lowest, so DESC already puts missing values last; ASC needs the extra term.
        # Plain `column DESC` (no extra terms) lets the index answer `list --limit N` without sorting.
        order = [f"{column} DESC"] if self.descending else [f"{column} IS NULL", f"{column} ASC"]
        if column != "created":
            order.append("created DESC" if self.descending else "created ASC")
        sql = " ORDER BY " + ", ".join(order)
        if self.limit is None and not self.offset:
            return sql, []
        return sql + " LIMIT ? OFFSET ?", [-1 if self.limit is None else self.limit, self.offset]

    @classmethod
    def of(cls, filter: "TraceFilter | None" = None, **filters: Any) -> "TraceFilter":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(filters) - known)
        if unknown:
            raise TypeError(f"unknown trace filter(s): {', '.join(unknown)}")
        base = filter or cls()
        return cls(**{**{name: getattr(base, name) for name in known}, **filters})


@dataclass(frozen=True)
class TraceSummary:
    """A trace's indexed fields, without parsing its body: what `list` needs."""
    id: str
    source: str
    task: str
    model: str | None
    created: datetime
    correct: bool | None
    reward: float | None
    completion_tokens: int | None
    completion_chars: int
    preview: str | None
    metadata: dict

    def to_dict(self) -> dict:
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "created": self.created.isoformat()}


class ImportResult(NamedTuple):
    imported: int
    skipped: int  # already in the store (same id)


def _epoch(moment: datetime) -> float:
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def _preview(trace: Trace) -> str | None:
    text = trace.prompt or next((call.prompt for call in trace.model_calls()), None)
    return " ".join(text.split())[:160] if text else None


def _dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def trace_row(trace: Trace, *, validated: bool = False) -> tuple:
    """The table row for a trace; validates it against the schema unless already done."""
    if not isinstance(trace, Trace):
        raise TypeError(f"expected a Trace, got {type(trace).__name__}")
    data = trace.to_dict()
    if not validated:
        validate_trace_dict(data, f"trace {trace.id}")
    try:
        body, metadata = _dumps(data), _dumps(data["metadata"])
    except ValueError as err:  # NaN/inf hidden in metadata or attributes
        raise TraceValidationError(f"trace {trace.id} is not valid JSON: {err}") from None
    return (trace.id, trace.source, trace.task, trace.model, _epoch(trace.created),
            None if trace.correct is None else int(trace.correct), finite_or_none(trace.reward),
            trace.completion_tokens, trace.completion_chars, _preview(trace), metadata, body)


def _explain(path: Path, err: sqlite3.Error) -> str:
    message = str(err)
    if "file is not a database" in message:
        return f"{path} is not a reasoner trace store (not an SQLite database, or its header is corrupt)"
    if "malformed" in message or "corrupt" in message or "decode" in message:
        return f"{path} is corrupt ({message}); restore it from a copy or start a new store"
    if "readonly" in message or "read-only" in message:
        return f"{path} cannot be written (read-only file, folder or file system: {message})"
    if "locked" in message or "busy" in message:
        return f"{path} is locked by another writer for too long ({message}); try again"
    return f"{path}: {message}"


class TraceStore:
    """Open with TraceStore.open(path); safe to share between threads, and between processes
    (each opens its own TraceStore on the same file)."""

    read_only = False

    def __init__(self, connection: sqlite3.Connection, path: Path):
        self._conn, self.path = connection, path
        self._lock = threading.RLock()

    # -- opening ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike | None = None, *, create: bool = True,
             busy_timeout_s: float = 60.0, read_only: bool = False) -> "TraceStore":
        """read_only: open with SQLite's `mode=ro` (never writes, so a 0444 file or a store in a read-only
        folder can be listed, shown and exported); writing through such a store raises TraceStoreError."""
        path = resolve_store_path(path)
        if read_only:
            return cls._open_read_only(path, busy_timeout_s)
        if not path.exists():
            if not create:
                raise TraceStoreError(f"no trace store at {path} (pass --store PATH or set REASONER_HOME)")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise TraceStoreError(f"cannot create a trace store at {path}: {err.strerror}") from None
        try:
            conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as err:
            raise TraceStoreError(_explain(path, err)) from None
        store = cls(conn, path)
        try:
            with store._errors():
                store._prepare()
        except BaseException:
            conn.close()
            raise
        return store

    @classmethod
    def _open_read_only(cls, path: Path, busy_timeout_s: float) -> "TraceStore":
        if not path.is_file():
            raise TraceStoreError(f"no trace store at {path} (pass --store PATH or set REASONER_HOME)")
        uri = "file:" + urllib.parse.quote(str(path.resolve()))
        # A WAL store needs its -shm file; in a read-only folder SQLite cannot create it, and then the
        # file can only be read as immutable (nobody can be writing it there either).
        attempts = [f"{uri}?mode=ro"]
        if not os.access(path.parent, os.W_OK) or not os.access(path, os.W_OK):
            attempts.append(f"{uri}?mode=ro&immutable=1")
        error = None
        for target in attempts:
            conn = None
            try:
                conn = sqlite3.connect(target, uri=True, timeout=busy_timeout_s, isolation_level=None,
                                       check_same_thread=False)
                store = cls(conn, path)
                store.read_only = True
                with store._errors():
                    store._check_read_only()
                return store
            except sqlite3.Error as err:
                error = TraceStoreError(_explain(path, err))
            except TraceStoreError as err:
                error = err
            if conn is not None:
                conn.close()
            if error is not None and "unable to open" not in str(error):
                break
        raise error

    def _check_read_only(self) -> None:
        if not self._is_ours():
            raise TraceStoreError(f"{self.path} is empty: it holds no traces yet")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > STORE_FORMAT:
            raise TraceStoreError(f"{self.path} was written by a newer reasoner (store format {version})")

    def _prepare(self) -> None:
        if not self._is_ours():
            with self._transaction():  # re-checked under the write lock: another process may have won
                if not self._is_ours():
                    for statement in filter(str.strip, _DDL.split(";")):  # executescript would COMMIT
                        self._conn.execute(statement)
                    self._conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                    self._conn.execute(f"PRAGMA user_version = {STORE_FORMAT}")
        version = self._conn.execute("PRAGMA user_version").fetchone()[0]
        if version > STORE_FORMAT:
            raise TraceStoreError(f"{self.path} was written by a newer reasoner (store format {version})")
        if self._conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":  # switching needs a lock
            self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")  # WAL+NORMAL: a killed process loses nothing committed
        present = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        missing = [sql for name, sql in _META_INDEXES.items() if name not in present]
        if missing:
            with self._transaction():
                for sql in missing:
                    self._conn.execute(sql)

    def _is_ours(self) -> bool:
        app_id = self._conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == APPLICATION_ID:
            return True
        has_tables = self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id or has_tables:
            raise TraceStoreError(f"{self.path} is an SQLite database but not a reasoner trace store; "
                                  "choose another --store path")
        return False  # empty file: ours to initialise

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "TraceStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.IntegrityError as err:
            raise TraceStoreError(f"{self.path}: {err}") from None
        except sqlite3.Error as err:
            if self.read_only and "readonly" in str(err):
                raise TraceStoreError(f"{self.path} was opened read-only; it cannot be written") from None
            raise TraceStoreError(_explain(self.path, err)) from None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")  # take the write lock up front: no upgrade deadlocks
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------------
    def add(self, trace: Trace) -> str:
        """Store one trace; returns its id."""
        self.add_many([trace])
        return trace.id

    def add_many(self, traces: Iterable[Trace], *, on_conflict: str = "error") -> int:
        """Store many traces in one transaction: all of them or, on any error or kill, none.

        on_conflict: 'error' (a duplicate id raises), 'ignore' (keep the stored one) or 'replace'.
        Returns how many rows were written.
        """
        return self._insert((trace_row(trace) for trace in traces), on_conflict)

    def _insert(self, rows: Iterable[tuple], on_conflict: str) -> int:
        verbs = {"error": "INSERT", "ignore": "INSERT OR IGNORE", "replace": "INSERT OR REPLACE"}
        if on_conflict not in verbs:
            raise ValueError(f"on_conflict must be one of {', '.join(verbs)}")
        sql = f"{verbs[on_conflict]} INTO traces ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
        with self._lock, self._errors(), self._transaction():
            return max(self._conn.executemany(sql, rows).rowcount, 0)

    def import_jsonl(self, path: str | os.PathLike) -> ImportResult:
        """Import a JSON-lines file (one trace per line, as `export --format jsonl` writes)
        in one transaction; traces already in the store are skipped."""
        from reasoner.traces.exchange import read_jsonl  # local: avoids an import cycle

        rows = [trace_row(trace, validated=True) for trace in read_jsonl(path)]
        imported = self._insert(rows, "ignore")
        return ImportResult(imported, len(rows) - imported)

    # -- reading ---------------------------------------------------------------------------
    def get(self, id_or_prefix: str) -> Trace:
        """The trace with this id, or with the only id starting with this prefix."""
        if not _ID_PREFIX.match(id_or_prefix or ""):
            raise TraceNotFound(f"{id_or_prefix!r} is not a trace id")
        rows = self._fetch("SELECT id, body FROM traces WHERE id = ? OR id GLOB ? LIMIT 3",
                           [id_or_prefix, id_or_prefix + "*"])
        exact = [row for row in rows if row[0] == id_or_prefix]
        rows = exact or rows
        if not rows:
            raise TraceNotFound(f"no trace {id_or_prefix!r} in {self.path}")
        if len(rows) > 1:
            raise TraceNotFound(f"{id_or_prefix!r} matches several traces ({', '.join(r[0] for r in rows)}, ...); "
                                "give more of the id")
        return self._parse(rows[0][1])

    def query(self, filter: TraceFilter | None = None, **filters: Any) -> list[Trace]:
        """Traces matching the filter (see TraceFilter for the keywords), newest first by default."""
        return list(self.iter_traces(filter, **filters))

    def iter_traces(self, filter: TraceFilter | None = None, **filters: Any) -> Iterator[Trace]:
        for (body,) in self._select("body", TraceFilter.of(filter, **filters)):
            yield self._parse(body)

    def summaries(self, filter: TraceFilter | None = None, **filters: Any) -> list[TraceSummary]:
        rows = self._select(_SUMMARY_COLUMNS, TraceFilter.of(filter, **filters))
        try:
            return [_summary(row) for row in rows]
        except (ValueError, TypeError) as err:
            raise TraceStoreError(f"{self.path} is corrupt: unreadable summary columns ({err})") from None

    def count(self, filter: TraceFilter | None = None, **filters: Any) -> int:
        trace_filter = TraceFilter.of(filter, **filters)
        where, params = trace_filter.where()
        # One filter: its own index answers. Several: SQLite (no statistics) would pick one of their indexes and
        # read every matching row; the narrow all-filters index is scanned instead (tens of ms at 100,000).
        hint = " INDEXED BY traces_filters" if trace_filter.coverable() >= 2 and self._has_index("traces_filters") else ""
        return self._fetch(f"SELECT count(*) FROM traces{hint}{where}", params)[0][0]

    def _has_index(self, name: str) -> bool:
        if not hasattr(self, "_indexes"):
            self._indexes = {row[0] for row in self._fetch("SELECT name FROM sqlite_master WHERE type = 'index'", [])}
        return name in self._indexes

    def _select(self, columns: str, trace_filter: TraceFilter) -> list[tuple]:
        where, params = trace_filter.where()
        order, order_params = trace_filter.order_limit()
        return self._fetch(f"SELECT {columns} FROM traces{where}{order}", params + order_params)

    def distinct(self, expression: str, limit: int = 200) -> list:
        """Distinct non-null values of a column or one of the indexed metadata expressions (for filter menus)."""
        if expression not in ("source", "task", "model", RUN_EXPR, GROUP_EXPR):
            raise ValueError(f"cannot list distinct values of {expression!r}")
        # A loose index scan: each value is one seek past the previous one, not a walk over every row.
        rows = self._fetch(f"WITH RECURSIVE seen(value) AS (SELECT min({expression}) FROM traces UNION ALL "
                           f"SELECT (SELECT min({expression}) FROM traces WHERE {expression} > seen.value) FROM seen "
                           f"WHERE seen.value IS NOT NULL) SELECT value FROM seen WHERE value IS NOT NULL LIMIT ?",
                           [limit])
        return [row[0] for row in rows]

    def _fetch(self, sql: str, params: list) -> list[tuple]:
        with self._lock, self._errors():
            return self._conn.execute(sql, params).fetchall()

    def _parse(self, body: str) -> Trace:
        try:
            return Trace.from_dict(json.loads(body))
        except (ValueError, KeyError, TypeError) as err:
            raise TraceStoreError(f"{self.path} is corrupt: it holds an unreadable trace ({err})") from None

    def check(self) -> list[str]:
        """SQLite's integrity check: an empty list when the file is sound."""
        rows = self._fetch("PRAGMA integrity_check", [])
        return [] if rows == [("ok",)] else [row[0] for row in rows]


def _summary(row: tuple) -> TraceSummary:
    (id_, source, task, model, created, correct, reward, tokens, chars, preview, metadata) = row
    return TraceSummary(id_, source, task, model, datetime.fromtimestamp(created, timezone.utc),
                        None if correct is None else bool(correct), reward, tokens, chars, preview,
                        json.loads(metadata))

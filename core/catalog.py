"""The snapshot catalog: an SQLite database in the state directory.

Holds groups, their volumes, the snapshot tree (parent links and each group's
current snapshot), member snapshots, and the journal of mutating operations
that ``snaptree recover`` reads after a crash.  WAL mode, a versioned schema,
one short transaction per write, every write a crash checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
import time
import types
from typing import Any, Iterator

import attrs

from . import faults
from .errors import CatalogCorrupt, PermissionDenied, StateError
from .model import Group, MemberSnapshot, MemoryState, Snapshot, SnapshotState, Volume
from .names import normal_name

__all__ = ["Catalog", "SCHEMA_VERSION", "JournalEntry"]

SCHEMA_VERSION = 2

_SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE groups (
    name       TEXT PRIMARY KEY,
    qmp_socket TEXT,
    options    TEXT NOT NULL DEFAULT '{}',
    created    REAL NOT NULL,
    current_id TEXT
);
CREATE TABLE volumes (
    spec       TEXT PRIMARY KEY,
    group_name TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
    backend    TEXT NOT NULL,
    locator    TEXT NOT NULL,
    position   INTEGER NOT NULL
);
CREATE TABLE snapshots (
    snapshot_id TEXT PRIMARY KEY,
    group_name  TEXT NOT NULL REFERENCES groups(name) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    parent_id   TEXT,
    created     REAL NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    state       TEXT NOT NULL,
    memory      TEXT,
    options     TEXT NOT NULL DEFAULT '{}',
    UNIQUE (group_name, name)
);
CREATE TABLE members (
    snapshot_id TEXT NOT NULL REFERENCES snapshots(snapshot_id) ON DELETE CASCADE,
    spec        TEXT NOT NULL,
    backend     TEXT NOT NULL,
    locator     TEXT NOT NULL,
    ref         TEXT NOT NULL,
    size_bytes  INTEGER,
    valid       INTEGER NOT NULL DEFAULT 1,
    data        TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (snapshot_id, spec)
);
CREATE TABLE journal (
    op_id       INTEGER PRIMARY KEY AUTOINCREMENT,
    group_name  TEXT NOT NULL,
    operation   TEXT NOT NULL,
    snapshot_id TEXT,
    status      TEXT NOT NULL,
    payload     TEXT NOT NULL DEFAULT '{}',
    started     REAL NOT NULL,
    finished    REAL,
    error       TEXT,
    pid         INTEGER
);
CREATE INDEX journal_open ON journal(status);
"""

#: version 1 -> 2: ``groups.revision`` counts changes of a group's volumes,
#: ``volumes.joined`` says when one was added to an existing group
_MIGRATIONS = {
    2: [("groups", "revision", "INTEGER NOT NULL DEFAULT 0"),
        # when a volume joined an existing group (NULL: it came with the group)
        ("volumes", "joined", "REAL")],
}


#: the largest integer SQLite stores
_SQLITE_MAX_INT = 2**63 - 1


#: a name holding other than ASCII (only such a name can have another spelling)
_NOT_ASCII = "length({0}) <> length(CAST({0} AS BLOB))"


def _by_group(method):
    """Read the method's first argument, a group name, as the name the catalog
    holds that group under (see :meth:`Catalog.stored_group_name`)."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if args and args[0] is not None:
            args = (self.stored_group_name(args[0]),) + args[1:]
        return method(self, *args, **kwargs)
    return wrapper


class JournalEntry(dict):
    """A journal row as a dict (op_id, group_name, operation, snapshot_id, ...)."""


class Catalog:
    """Access to one catalog database file."""

    def __init__(self, path: str):
        self.path = path
        #: (name, rowid, created) -> the group as added, without its current snapshot
        self._definitions: dict[tuple, Group] = {}
        directory = os.path.dirname(path) or "."
        if not os.access(directory, os.W_OK):
            raise PermissionDenied(f"state directory {directory} is not writable")
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise PermissionDenied(f"catalog {path} is not writable")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            # a Snaptree shared by threads serializes its calls (snaptree.api)
            self.conn = sqlite3.connect(path, timeout=30.0, isolation_level=None,
                                        check_same_thread=False)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA busy_timeout = 30000")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.conn.execute("PRAGMA synchronous = FULL")
            self.conn.create_function("snaptree_nfc", 1, normal_name, deterministic=True)
            self._migrate()
        except sqlite3.DatabaseError as err:
            raise CatalogCorrupt(f"cannot open catalog {path}: {err}") from err
        except OSError as err:
            raise StateError(f"cannot open catalog {path}: {err.strerror}") from err

    def close(self) -> None:
        self.conn.close()

    # -- plumbing -------------------------------------------------------------

    @contextlib.contextmanager
    def write(self, label: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One immediate write transaction; a crash checkpoint after commit.

        With ``durable=False`` the commit skips its fsync: the transaction
        survives the process being killed (it sits in the OS's cache) but not
        a power cut until the next durable write, whose fsync of the WAL also
        covers it.  Use it only for a write that a durable one follows and
        that ``recover`` can do without (it saves a millisecond per write).
        """
        faults.checkpoint(f"catalog:{label}:before")
        try:
            if not durable:
                self.conn.execute("PRAGMA synchronous = NORMAL")
            try:
                self.conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self.conn
                except BaseException:
                    self.conn.execute("ROLLBACK")
                    raise
                self.conn.execute("COMMIT")
            finally:
                if not durable:
                    self.conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.OperationalError as err:
            if "locked" in str(err) or "busy" in str(err):
                from .errors import Busy
                raise Busy(f"catalog is busy ({err}); try again") from err
            if "readonly" in str(err) or "read-only" in str(err):
                raise PermissionDenied(f"catalog {self.path} is read-only") from err
            raise StateError(f"catalog write failed: {err}") from err
        faults.checkpoint(f"catalog:{label}:after")

    def _migrate(self) -> None:
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            self.conn.execute("BEGIN IMMEDIATE")
            tables = {r[0] for r in self.conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table'")}
            if "meta" not in tables:
                for statement in _SCHEMA_V1.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute("INSERT INTO meta VALUES ('schema_version', '1')")
            self.conn.execute("COMMIT")
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise StateError(
                f"catalog {self.path} has schema version {version}; this snaptree knows "
                f"up to {SCHEMA_VERSION}: upgrade snaptree")
        if version < SCHEMA_VERSION or not self._has_columns():
            try:  # one process migrates; the others then see it
                self.conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as err:
                from .errors import Busy
                raise Busy(f"catalog {self.path} is busy ({err}); try again") from err
            try:
                for step in range(2, SCHEMA_VERSION + 1):  # every step adds what is missing
                    for table, column, declared in _MIGRATIONS[step]:
                        # a catalog an earlier build of this version migrated
                        # may hold some of the columns already
                        have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
                        if column not in have:
                            self.conn.execute(
                                f"ALTER TABLE {table} ADD COLUMN {column} {declared}")
                    self.conn.execute("UPDATE meta SET value=? WHERE key='schema_version'",
                                      (str(step),))
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def _has_columns(self) -> bool:
        """False for a catalog a build between two schema changes left short."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(volumes)")}
        return "joined" in have

    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0])

    def integrity_check(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    # -- groups ---------------------------------------------------------------

    def stored_group_name(self, name: str) -> str:
        """The name the catalog holds group ``name`` under, else ``name``.

        Names are compared in their :func:`~snaptree.names.normal_name`
        form: a group stored under another spelling of the same name (by
        a snaptree that did not normalise) is found by either.
        """
        if self.conn.execute("SELECT 1 FROM groups WHERE name=?", (name,)).fetchone():
            return name
        row = self.conn.execute(
            f"SELECT name FROM groups WHERE name=?1 OR ({_NOT_ASCII.format('name')}"
            " AND snaptree_nfc(name)=?1) ORDER BY name=?1 DESC, rowid LIMIT 1",
            (normal_name(name),)).fetchone()
        return row[0] if row else name

    def add_group(self, group: Group) -> None:
        """Add ``group`` under its name's normal form; IntegrityError if it is taken."""
        group = attrs.evolve(group, name=normal_name(group.name))
        with self.write("group-create") as db:
            if self.has_group(group.name):  # under this or another spelling
                raise sqlite3.IntegrityError(f"group {group.name!r} exists")
            db.execute(
                "INSERT INTO groups (name, qmp_socket, options, created) VALUES (?,?,?,?)",
                (group.name, group.qmp_socket, json.dumps(dict(group.options)), group.created))
            for position, volume in enumerate(group.volumes):
                db.execute(
                    "INSERT INTO volumes (spec, group_name, backend, locator, position) VALUES (?,?,?,?,?)",
                    (volume.spec, group.name, volume.backend, volume.locator, position))

    def group_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM groups ORDER BY name")]

    @_by_group
    def has_group(self, name: str) -> bool:
        return self.conn.execute("SELECT 1 FROM groups WHERE name=?", (name,)).fetchone() is not None

    @_by_group
    def get_group(self, name: str) -> Group | None:
        row = self.conn.execute(
            "SELECT g.rowid, g.created, g.qmp_socket, g.options, g.current_id, s.name, g.revision"
            " FROM groups g LEFT JOIN snapshots s ON s.snapshot_id = g.current_id"
            " WHERE g.name=?", (name,)).fetchone()
        if row is None:
            return None
        # A group changes in place: its socket and options (update_group) and
        # its volumes (which bump its revision); the same name added again
        # after a delete is another row (its rowid, its time).
        key = (name, row[0], row[1], row[2], row[3], row[6])
        defined = self._definitions.get(key)
        if defined is None:
            rows = self.conn.execute(
                "SELECT backend, locator, spec, joined FROM volumes WHERE group_name=?"
                " ORDER BY position", (name,)).fetchall()
            if not rows:
                return None  # deleted between the two reads
            # shared by every Group this catalog returns for it: read-only
            defined = Group(name=name, volumes=tuple(Volume(r[0], r[1]) for r in rows),
                            qmp_socket=row[2],
                            options=types.MappingProxyType(json.loads(row[3])), created=row[1],
                            joined=types.MappingProxyType(
                                {r[2]: r[3] for r in rows if r[3] is not None}))
            for stale in [k for k in self._definitions if k[0] == name]:
                del self._definitions[stale]
            self._definitions[key] = defined
        return attrs.evolve(defined, current=row[5] if row[4] else None, current_id=row[4])

    @_by_group
    def add_volumes(self, name: str, volumes) -> None:
        """Append ``volumes`` to group ``name``."""
        with self.write("group-add") as db:
            last = db.execute("SELECT max(position) FROM volumes WHERE group_name=?",
                              (name,)).fetchone()[0]
            joined = time.time()
            for position, volume in enumerate(volumes, (last if last is not None else -1) + 1):
                db.execute(
                    "INSERT INTO volumes (spec, group_name, backend, locator, position, joined)"
                    " VALUES (?,?,?,?,?,?)",
                    (volume.spec, name, volume.backend, volume.locator, position, joined))
            db.execute("UPDATE groups SET revision = revision + 1 WHERE name=?", (name,))

    @_by_group
    def remove_volumes(self, name: str, specs) -> None:
        """Take the volumes ``specs`` out of group ``name``, and the members its
        snapshots hold on them out of the catalog."""
        with self.write("group-remove") as db:
            for spec in specs:
                db.execute("DELETE FROM members WHERE spec=? AND snapshot_id IN"
                           " (SELECT snapshot_id FROM snapshots WHERE group_name=?)", (spec, name))
                db.execute("DELETE FROM volumes WHERE group_name=? AND spec=?", (name, spec))
            db.execute("UPDATE groups SET revision = revision + 1 WHERE name=?", (name,))

    @_by_group
    def members_on(self, group: str, spec: str) -> list[tuple[str, str]]:
        """``(snapshot name, member ref)`` of each member ``group``'s snapshots hold on ``spec``."""
        return [(r[0], r[1]) for r in self.conn.execute(
            "SELECT s.name, m.ref FROM snapshots s JOIN members m ON m.snapshot_id = s.snapshot_id"
            " WHERE s.group_name=? AND m.spec=? ORDER BY s.created", (group, spec))]

    @_by_group
    def update_group(self, name: str, qmp_socket: str | None, options: dict[str, Any]) -> None:
        """Give group ``name`` another QMP socket and options (volumes stay)."""
        with self.write("group-set") as db:
            db.execute("UPDATE groups SET qmp_socket=?, options=? WHERE name=?",
                       (qmp_socket, json.dumps(options), name))

    # -- unsynced creates, per boot (see snaptree.boot) ----------------------

    @staticmethod
    def _epoch_key(group: str, prefix: str = "") -> str:
        # group names hold no control characters: \x1f cannot occur in one
        return f"intents\x1f{group}\x1f{prefix}"

    def _epoch_bounds(self, group: str) -> tuple[str, str]:
        """Keys of ``group``'s epochs lie strictly between these (prefixes are hex)."""
        low = self._epoch_key(group)
        return low, low + "\x7f"

    @_by_group
    def intent_epochs(self, group: str) -> dict[str, str]:
        """Snapshot-id prefix -> boot id of each epoch of unsynced creates of ``group``."""
        low, high = self._epoch_bounds(group)
        rows = self.conn.execute("SELECT key, value FROM meta WHERE key > ? AND key < ?",
                                 (low, high))
        return {r[0][len(low):]: r[1] for r in rows}

    @_by_group
    def add_intent_epoch(self, group: str, prefix: str, boot: str, db) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (self._epoch_key(group, prefix), boot))

    @_by_group
    def drop_intent_epoch(self, group: str, prefix: str, db) -> None:
        db.execute("DELETE FROM meta WHERE key=?", (self._epoch_key(group, prefix),))

    def volume_owner(self, spec: str) -> str | None:
        row = self.conn.execute("SELECT group_name FROM volumes WHERE spec=?", (spec,)).fetchone()
        return row[0] if row else None

    @_by_group
    def delete_group(self, name: str) -> None:
        with self.write("group-delete") as db:
            db.execute("DELETE FROM groups WHERE name=?", (name,))
            db.execute("DELETE FROM meta WHERE key > ? AND key < ?", self._epoch_bounds(name))

    @_by_group
    def current_id(self, group: str) -> str | None:
        row = self.conn.execute("SELECT current_id FROM groups WHERE name=?", (group,)).fetchone()
        return row[0] if row else None

    @_by_group
    def set_current(self, group: str, snapshot_id: str | None, db=None) -> None:
        if db is not None:
            db.execute("UPDATE groups SET current_id=? WHERE name=?", (snapshot_id, group))
            return
        with self.write("set-current") as db:
            db.execute("UPDATE groups SET current_id=? WHERE name=?", (snapshot_id, group))

    # -- snapshots ------------------------------------------------------------

    def add_pending_snapshot(self, snap: Snapshot, db) -> None:
        db.execute(
            "INSERT INTO snapshots (snapshot_id, group_name, name, parent_id, created, description,"
            " state, memory, options) VALUES (?,?,?,?,?,?,?,?,?)",
            (snap.snapshot_id, snap.group, snap.name, snap.parent, snap.created, snap.description,
             snap.state.value, None, json.dumps(dict(snap.options))))

    def add_members(self, members, db) -> None:
        """Record members; a member already recorded is never replaced: a
        second row for one snapshot and volume is a bug, raised as
        :class:`StateError`."""
        try:
            db.executemany(
                "INSERT INTO members (snapshot_id, spec, backend, locator, ref, size_bytes,"
                " valid, data) VALUES (?,?,?,?,?,?,?,?)",
                [(m.snapshot_id, Volume(m.backend, m.locator).spec, m.backend, m.locator, m.ref,
                  m.size_bytes, int(m.valid), json.dumps(dict(m.data))) for m in members])
        except sqlite3.IntegrityError as err:
            raise StateError(
                "the catalog refused members of snapshot(s) "
                f"{', '.join(sorted({m.snapshot_id for m in members}))} ({err}): a member "
                "already recorded is never replaced, and every member needs its snapshot") from err

    def set_memory(self, snapshot_id: str, memory: MemoryState | None, db) -> None:
        value = None if memory is None else json.dumps(
            {"kind": memory.kind, "ref": memory.ref, "size_bytes": memory.size_bytes,
             "data": dict(memory.data)})
        db.execute("UPDATE snapshots SET memory=? WHERE snapshot_id=?", (value, snapshot_id))

    def set_state(self, snapshot_id: str, state: SnapshotState, db) -> None:
        db.execute("UPDATE snapshots SET state=? WHERE snapshot_id=?", (state.value, snapshot_id))

    def remove_snapshot_row(self, snapshot_id: str, db) -> None:
        db.execute("DELETE FROM snapshots WHERE snapshot_id=?", (snapshot_id,))

    def reparent(self, old_parent: str, new_parent: str | None, db) -> None:
        db.execute("UPDATE snapshots SET parent_id=? WHERE parent_id=?", (new_parent, old_parent))

    def _snapshot_from_row(self, row) -> Snapshot:
        members = tuple(
            MemberSnapshot(backend=m["backend"], locator=m["locator"], snapshot_id=m["snapshot_id"],
                           ref=m["ref"], size_bytes=m["size_bytes"], valid=bool(m["valid"]),
                           data=json.loads(m["data"]))
            for m in self.conn.execute(
                "SELECT m.* FROM members m LEFT JOIN volumes v ON v.spec = m.spec "
                "WHERE m.snapshot_id=? ORDER BY v.position, m.spec", (row["snapshot_id"],)))
        memory = None
        if row["memory"]:
            raw = json.loads(row["memory"])
            memory = MemoryState(kind=raw["kind"], ref=raw["ref"], size_bytes=raw.get("size_bytes"),
                                 data=raw.get("data") or {})
        parent_name = None
        if row["parent_id"]:
            p = self.conn.execute("SELECT name FROM snapshots WHERE snapshot_id=?",
                                  (row["parent_id"],)).fetchone()
            parent_name = p[0] if p else None
        return Snapshot(snapshot_id=row["snapshot_id"], group=row["group_name"], name=row["name"],
                        parent=parent_name, created=row["created"], description=row["description"],
                        state=SnapshotState(row["state"]), members=members, memory=memory,
                        options=json.loads(row["options"]))

    @_by_group
    def get_snapshot(self, group: str, name: str) -> Snapshot | None:
        """Snapshot ``name`` of ``group``, under any spelling of the name
        (:func:`~snaptree.names.normal_name`): the one spelled so first."""
        row = self.conn.execute("SELECT * FROM snapshots WHERE group_name=? AND name=?",
                                (group, name)).fetchone()
        if row is None:
            row = self.conn.execute(
                f"SELECT * FROM snapshots WHERE group_name=?1 AND (name=?2 OR ("
                f"{_NOT_ASCII.format('name')} AND snaptree_nfc(name)=?2))"
                " ORDER BY name=?2 DESC, rowid LIMIT 1", (group, normal_name(name))).fetchone()
        return self._snapshot_from_row(row) if row else None

    def edit_snapshot(self, snapshot_id: str, name: str, description: str) -> None:
        """Give a snapshot another name (stored in its normal form) or
        description (nothing on storage names it)."""
        with self.write("snapshot-edit") as db:
            db.execute("UPDATE snapshots SET name=?, description=? WHERE snapshot_id=?",
                       (normal_name(name), description, snapshot_id))

    def get_snapshot_by_id(self, snapshot_id: str) -> Snapshot | None:
        row = self.conn.execute("SELECT * FROM snapshots WHERE snapshot_id=?", (snapshot_id,)).fetchone()
        return self._snapshot_from_row(row) if row else None

    @_by_group
    def list_snapshots(self, group: str, states: tuple[SnapshotState, ...] | None = None) -> list[Snapshot]:
        rows = self.conn.execute(
            "SELECT * FROM snapshots WHERE group_name=? ORDER BY created, rowid", (group,)).fetchall()
        snaps = [self._snapshot_from_row(r) for r in rows]
        if states is not None:
            snaps = [s for s in snaps if s.state in states]
        return snaps

    def children_ids(self, snapshot_id: str) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT snapshot_id FROM snapshots WHERE parent_id=? ORDER BY created, rowid", (snapshot_id,))]

    def parent_id(self, snapshot_id: str) -> str | None:
        row = self.conn.execute("SELECT parent_id FROM snapshots WHERE snapshot_id=?",
                                (snapshot_id,)).fetchone()
        return row[0] if row else None

    # -- journal --------------------------------------------------------------

    @_by_group
    def journal_begin(self, group: str, operation: str, snapshot_id: str | None,
                      payload: dict[str, Any], db) -> int:
        cur = db.execute(
            "INSERT INTO journal (group_name, operation, snapshot_id, status, payload, started, pid)"
            " VALUES (?,?,?,?,?,?,?)",
            (group, operation, snapshot_id, "open", json.dumps(payload), time.time(), os.getpid()))
        return int(cur.lastrowid)

    def journal_update(self, op_id: int, payload: dict[str, Any], db) -> None:
        db.execute("UPDATE journal SET payload=? WHERE op_id=?", (json.dumps(payload), op_id))

    def journal_finish(self, op_id: int, status: str, db, error: str | None = None) -> None:
        db.execute("UPDATE journal SET status=?, finished=?, error=? WHERE op_id=?",
                   (status, time.time(), error, op_id))

    @_by_group
    def has_open_journal(self, group: str) -> bool:
        """True when ``group`` has an unfinished operation (asked before each one)."""
        return self.conn.execute(
            "SELECT 1 FROM journal WHERE status='open' AND group_name=? LIMIT 1",
            (group,)).fetchone() is not None

    @_by_group
    def journal_open(self, group: str | None = None) -> list[JournalEntry]:
        sql = "SELECT * FROM journal WHERE status='open'"
        args: tuple = ()
        if group is not None:
            sql += " AND group_name=?"
            args = (group,)
        entries = []
        for row in self.conn.execute(sql + " ORDER BY op_id", args):
            entry = JournalEntry(dict(row))
            entry["payload"] = json.loads(entry["payload"])
            entries.append(entry)
        return entries

    @_by_group
    def journal_last(self, group: str, operation: str, status: str) -> JournalEntry | None:
        """The newest journal entry of ``group`` for ``operation`` in ``status``."""
        row = self.conn.execute(
            "SELECT * FROM journal WHERE group_name=? AND operation=? AND status=?"
            " ORDER BY op_id DESC LIMIT 1", (group, operation, status)).fetchone()
        if row is None:
            return None
        entry = JournalEntry(dict(row))
        entry["payload"] = json.loads(entry["payload"])
        return entry

    @_by_group
    def journal_tail(self, group: str | None = None, limit: int = 50) -> list[JournalEntry]:
        sql = "SELECT * FROM journal"
        args: tuple = ()
        if group is not None:
            sql += " WHERE group_name=?"
            args = (group,)
        if limit > _SQLITE_MAX_INT:
            limit = -1  # SQLite's "no limit"; a bigger number would overflow its integer
        rows = self.conn.execute(sql + " ORDER BY op_id DESC LIMIT ?", args + (limit,)).fetchall()
        out = []
        for row in rows:
            entry = JournalEntry(dict(row))
            entry["payload"] = json.loads(entry["payload"])
            out.append(entry)
        return out

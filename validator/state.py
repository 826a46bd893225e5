"""SQLite persistence: ratings, BMA, per-window results, weight posts.

Everything a window changes is written in one transaction (`save_window`), so a
validator killed at any point resumes either before or after the whole window.
Posts carry a status machine planned → committed → revealed (or missed); the
planned row holds uids, weights and salt *before* anything is sent, so a
restarted validator re-sends byte-identical transactions and never a second,
different vote for an epoch.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from validator.errors import StateError, StateMismatchError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS miners (
    uid INTEGER PRIMARY KEY, mu REAL NOT NULL, sigma REAL NOT NULL, bma REAL NOT NULL,
    windows_seen INTEGER NOT NULL, score REAL NOT NULL);
CREATE TABLE IF NOT EXISTS windows (window INTEGER PRIMARY KEY, evaluated INTEGER NOT NULL,
    submitted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    window INTEGER NOT NULL, uid INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,
    s_own REAL, s_rand REAL, sync REAL, final REAL NOT NULL, PRIMARY KEY (window, uid));
CREATE TABLE IF NOT EXISTS posts (
    epoch INTEGER PRIMARY KEY, uids TEXT NOT NULL, weights TEXT NOT NULL, salt BLOB NOT NULL,
    status TEXT NOT NULL);
"""

POST_STATUSES = ("planned", "committed", "revealed", "missed")


@dataclass
class MinerState:
    uid: int
    mu: float = 25.0
    sigma: float = 25.0 / 3.0
    bma: float = 0.0
    windows_seen: int = 0
    score: float = 0.0


@dataclass(frozen=True)
class ResultRow:
    window: int
    uid: int
    status: str  # scored | skipped | rejected | missing
    reason: str
    s_own: float | None
    s_rand: float | None
    sync: float | None
    final: float


@dataclass(frozen=True)
class Plan:
    epoch: int
    uids: tuple[int, ...]
    weights: tuple[int, ...]
    salt: bytes
    status: str = "planned"


class ValidatorState:
    def __init__(self, path: Path | str, run_id: str) -> None:
        # one service thread at a time uses it, but not always the same worker thread
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            self.db.executescript(SCHEMA)
            row = self.db.execute("SELECT value FROM meta WHERE key='run_id'").fetchone()
        except sqlite3.DatabaseError as exc:
            self.db.close()
            raise StateError(f"validator state {path} is not a usable SQLite database "
                             f"({exc})") from exc
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('run_id', ?)", (run_id,))
        elif row[0] != run_id:
            self.db.close()
            raise StateMismatchError(str(path), row[0], run_id)

    def close(self) -> None:
        self.db.close()

    # --- reads ---------------------------------------------------------------------
    def miners(self) -> dict[int, MinerState]:
        rows = self.db.execute("SELECT uid, mu, sigma, bma, windows_seen, score FROM miners")
        return {r[0]: MinerState(*r) for r in rows}

    def has_window(self, window: int) -> bool:
        q = "SELECT 1 FROM windows WHERE window=?"
        return self.db.execute(q, (window,)).fetchone() is not None

    def last_window(self) -> int | None:
        row = self.db.execute("SELECT MAX(window) FROM windows").fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def results(self, window: int) -> list[ResultRow]:
        rows = self.db.execute("SELECT window, uid, status, reason, s_own, s_rand, sync, final "
                               "FROM results WHERE window=? ORDER BY uid", (window,))
        return [ResultRow(*r) for r in rows]

    def plans(self, statuses: Iterable[str] = POST_STATUSES) -> list[Plan]:
        wanted = set(statuses)
        rows = self.db.execute("SELECT epoch, uids, weights, salt, status FROM posts "
                               "ORDER BY epoch")
        return [Plan(r[0], tuple(json.loads(r[1])), tuple(json.loads(r[2])), bytes(r[3]), r[4])
                for r in rows if r[4] in wanted]

    def plan(self, epoch: int) -> Plan | None:
        found = [p for p in self.plans() if p.epoch == epoch]
        return found[0] if found else None

    # --- writes (one transaction each) --------------------------------------------------
    def save_window(self, window: int, miners: Iterable[MinerState], rows: Iterable[ResultRow],
                    submitted: int, evaluated: int, plan: Plan | None = None) -> None:
        if self.has_window(window):
            raise StateError(f"window {window} is already recorded")
        with self._tx():
            self.db.executemany(
                "INSERT OR REPLACE INTO miners VALUES (?, ?, ?, ?, ?, ?)",
                [(m.uid, m.mu, m.sigma, m.bma, m.windows_seen, m.score) for m in miners])
            self.db.executemany(
                "INSERT INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.window, r.uid, r.status, r.reason, r.s_own, r.s_rand, r.sync, r.final)
                 for r in rows])
            self.db.execute("INSERT INTO windows VALUES (?, ?, ?)", (window, evaluated, submitted))
            if plan is not None:
                self._insert_plan(plan)

    def add_plan(self, plan: Plan) -> None:
        with self._tx():
            self._insert_plan(plan)

    def set_status(self, epoch: int, status: str) -> None:
        if status not in POST_STATUSES:
            raise StateError(f"unknown post status {status!r}")
        with self._tx():
            self.db.execute("UPDATE posts SET status=? WHERE epoch=?", (status, epoch))

    def _insert_plan(self, plan: Plan) -> None:
        self.db.execute("INSERT OR IGNORE INTO posts VALUES (?, ?, ?, ?, ?)",
                        (plan.epoch, json.dumps(list(plan.uids)),
                         json.dumps(list(plan.weights)), plan.salt, plan.status))

    def _tx(self) -> _Transaction:
        return _Transaction(self.db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

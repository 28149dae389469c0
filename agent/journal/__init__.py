"""Journal: the durable record of inputs, decisions and state (SQLite), and its replay.

Its modules, by role:

    store      Journal: open, load, commit, snapshot, history, verify, close
    verify     replay through `step`: for load, and to check every recorded decision
    schema     tables, migrations, the checks made on opening, the atomic create of a new file
    statedir   the state directory: journal.db and the lock of its one writer
    sqlite     one connection, sqlite3 errors turned into ours
    subjects   the names an entry is about (what `history --service` finds)
    reports    HistoryRow as text and JSON; the ISO 8601 timestamp format
    codec      canonical JSON of the core's values
"""

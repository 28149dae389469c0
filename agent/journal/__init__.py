"""Journal: the durable record of inputs, decisions and state (SQLite), and its replay."""

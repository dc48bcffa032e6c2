"""The database room: the only code that knows which database it talks to.

Rooms above describe their work as plans of statements (`plan`), submit writes as
jobs to the group committer and reads to the store (`store`), and take leases for
work only one replica may do (`lease`). `dialect.open_database` picks SQLite
(`sqlite`, the standard library's driver on threads of its own) or PostgreSQL
(`postgres`, asyncpg) from the URL (`url`); `migrations` holds the schema.
"""

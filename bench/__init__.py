"""`make bench`: every benchmark in one run, one table, results also written as JSON.

Each ``bench/bench_<name>.py`` module exposes ``async def run(ctx: BenchContext) ->
list[Row]``. The runner starts the infrastructure once (embedded PostgreSQL and
the tansu broker, or ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS``), gives each
benchmark its own database and topic prefix, and prints the rows side by side.
"""

"""The three Healthscore services (ingest, scoring, alerts) and the `healthscore` CLI."""

"""Code that two or more Healthscore services really share.

Settings base, the event catalogue, the database engine, Kafka client
factories, API-key authentication, metrics and HTTP helpers, logging, and the
embedded infrastructure used by `healthscore dev` and the tests.
"""

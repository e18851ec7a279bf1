"""Embedded stand-ins for the outside systems — a local LLM judge endpoint, an HTTP front for the
embedded ClickHouse engine (chdb), a Kafka mock cluster host, realistic traffic — for the demo, the tests
and the benchmarks. Shipped (the demo needs them), never imported by the production path
(`core`, `judges`, `sinks`, `operators`); only `flows` composes them in, for `judgeflow demo`."""

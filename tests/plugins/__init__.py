"""Test fixtures and helpers in one place (issue 16 point 8).

Every module here is a pytest plugin registered by ``pytest_plugins`` in
``tests/conftest.py``; its fixtures are available in every test, and its plain helpers
are imported as ``from tests.plugins.<module> import ...``. A test module never imports
another test module (``tests/test_layout.py`` checks it).

- ``factories``: records with sensible defaults (RawEvent dict, RenderedEmail,
  DispatchRequest, SendResult, DeadLetter, StoredDeadLetter).
- ``fakes``: fake provider, replay sink and backend.
- ``metrics``: ``RecordingMetrics``, the test implementation of ``app.observability.StageMetrics``.
- ``agents``: a Spillway Faust app in Faust's test context with outputs captured.
- ``intake``: a real intake on an ephemeral port with an in-memory sink.
- ``promql``: metric names used by PromQL expressions (deploy tests).
- ``sim``: the simulator tests' fake clock, in-process simulator and sink, processes.
- ``cli``: a fake confluent-kafka producer for the CLI tests.
- ``stack``: the integration tier (shared stack, per-test namespace ``Env``, own simulator).
- ``traffic``: provider policies for a worker's environment; events produced into the lanes.
- ``providers``: the reliability tests' provider modes (with and without idempotency keys).
- ``scram``: a private SASL/SCRAM broker with ACLs for the Kafka security tests.
- ``ledger``: a sent-ledger table whose changelog acks come when the test says.
- ``chaos``: the short chaos scenarios (one ``bench.chaos`` run on the shared stack).
- ``mutation``: hypothesis settings for mutation runs (loaded by ``scripts/mutation`` only).

Plain helper modules (no fixtures) need no registration; a plugin with fixtures must be
listed in ``tests/conftest.py`` (``tests/test_layout.py`` checks it).
"""

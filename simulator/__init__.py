"""Stand-ins for real email providers, for tests and benchmarks.

- :mod:`simulator.provider`: an HTTP provider shaped like SendGrid v3 Mail Send, with
  quotas, error/latency/outage injection, idempotency and a ledger of accepted mail.
- :mod:`simulator.smtp_sink`: a real SMTP server (aiosmtpd) that records every message.
- :mod:`simulator.client`: typed clients for their control APIs.
- :mod:`simulator.bench`: a quick throughput check of the provider simulator.
"""

# Integration tests against real servers (owned by the integration work).

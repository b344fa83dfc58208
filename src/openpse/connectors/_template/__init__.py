"""Template for a new connector: copy this folder to ``connectors/<name>/``.

1. ``transformers.py``: pure functions ``build_authorize(req) -> dict`` and
   ``parse_authorize(status_code, body) -> ConnectorResult``; map the acquirer's statuses to
   ``Outcome`` here and nowhere else. Convert minor units to the acquirer's unit here.
2. ``connector.py``: a class with ``name`` and the five async methods of
   ``openpse.connectors.base.Connector``; every HTTP call has a timeout and sends ``reference``
   as the acquirer's idempotency key.
3. Register it in ``openpse.connectors.registry`` and run the shared contract tests
   (``tests/unit/test_connector_contract.py``) against it.
"""

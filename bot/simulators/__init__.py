"""Loopback simulators of the Telegram Bot API and of AdTarget's REST API.

They speak the real wire protocols (form-encoded Bot API calls with long
polling, AdTarget's JSON, error envelope, rate limit and Idempotency-Key
replay), so the tests and `python -m bot sandbox` run the real bridge against
them with no token and no network.
"""

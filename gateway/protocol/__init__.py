"""The wire contract: event names, payload models and error codes.

Imports nothing from the server.
"""

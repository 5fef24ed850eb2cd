"""Running the gateway under Hypercorn: configuration loading and the worker launcher."""

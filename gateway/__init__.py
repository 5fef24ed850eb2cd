"""WS-Hub: a Socket.IO real-time messaging gateway on Quart and Hypercorn."""

__version__ = "0.1.0"

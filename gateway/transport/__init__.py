"""The Socket.IO transport: the only package that imports python-socketio."""

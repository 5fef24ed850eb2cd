"""Plain HTTP routes served beside Socket.IO by a Quart app."""

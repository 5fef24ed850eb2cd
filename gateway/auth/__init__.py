"""Optional JWT authentication: verifying tokens and ending sessions when they expire."""

"""Presence stores: who is connected, their usernames, metadata and the follower index."""

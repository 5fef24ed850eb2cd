"""The event pipeline: small middlewares around every client event, in the order
size limit → rate limit → auth/permission → schema validation → handler."""

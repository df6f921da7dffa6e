"""The change path: what changes what serves. The coordinator (``control``) takes a commit
through plan, load, canary or swap, and records it in the ledger. See docs/architecture.md."""

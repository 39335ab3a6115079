"""The store's schema revisions, oldest first; each names the one it revises."""

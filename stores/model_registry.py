"""Model registry: versioned artifacts on disk, indexed in SQL (owned by the trainer work)."""

"""Storage: the schema, the database handle and the ledger. Nothing here sends anything."""

"""Operations: backup and restore of a whole installation (database, renditions, keys)."""

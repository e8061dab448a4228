"""Layer 0: what every other layer may use (errors, units, dtypes, chunk ranges, byte counts)."""

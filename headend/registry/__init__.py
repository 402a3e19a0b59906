"""The meter registry: meters and concentrators, imported from CSV and looked up."""

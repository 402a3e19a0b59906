"""Wire formats spoken by meters and concentrators: typed values in, bytes out, and back."""

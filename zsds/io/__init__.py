"""The edges of zsds: everything that touches files, tables and the archive layout."""

"""Archive curation: data releases, integrity verification and table export."""

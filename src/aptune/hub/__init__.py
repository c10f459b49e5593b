"""Files copied into exported model folders (self-contained loader code)."""

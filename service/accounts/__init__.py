"""Projects and their API keys: who is calling, and which project they may act on."""

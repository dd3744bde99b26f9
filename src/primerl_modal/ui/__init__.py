"""Terminal output: data to stdout, progress and hints to stderr (STYLE.md 8)."""

"""The pure planning core: data in, frozen dataclasses out. Never imports modal."""

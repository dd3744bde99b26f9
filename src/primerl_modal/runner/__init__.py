"""The runner: the one piece of prm that runs next to prime-rl (in the Modal container, or
detached on a researcher's own machine). It must import nothing heavy: no modal, no rich."""

"""One module per prm command; cli.py only wires them."""

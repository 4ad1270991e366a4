"""The gateway's HTTP route tables, one module per group of routes (gateway/app.py and gateway/edge.py install them)."""

"""What Nova's compute/api.py does, one module per resource: validate a request, then
read or write the rows; return plain data, never talk to a host or render anything.

The seed's flow: cli/ → api/ → conductor/ → scheduler/ → rpc/. The conductor takes the
rows written here and does the work; the CLI renders what both return. This package's
``__init__`` imports nothing: a command loads only the resources it touches.
"""

"""herd's Jinja2 templates, importable as the resource package ``herd_templates``.

A regular package (not a namespace one) so ``importlib.resources.files`` finds it on
Python 3.9, inside the agent's zipapp as well as in a checkout or a wheel.
"""

"""The HTTP API (`headend serve`): payment intake for channels and operators, accounts and their ledgers.

`app.create_app` composes it; `auth` holds the authentication dependencies every router uses; the routers
(`channels`, `accounts`, `payments`, `health`) are listed in `app.ROUTERS`. See docs/api.md.
"""

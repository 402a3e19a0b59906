"""The web console: people sign in with a password and see server-rendered pages (operators' collection overview, field
staff's landing page); sessions, CSRF tokens, lock-out and roles. Mounted into the HTTP API's app by `headend serve`."""

"""The controller: an HTTP API in rspamd's shapes, served from the proxy daemon.

  server.py    the listener (aiohttp), routing, errors as short JSON, body limits
  auth.py      password hashes (``smtpproxy pw``), secure_ip, the wrong-password limiter,
               the same-origin rule for requests that change state
  api.py       the endpoints rspamc and rspamd's web interface call
  history.py   a row per scanned message in the common store; refusal references
  cli.py       ``smtpproxy pw``, ``smtpproxy history``, ``smtpproxy trace``
  web.py       the web interface's page (static/: index.html, app.js, app.css), CSP

docs/controller.md lists the endpoints and what of rspamd's protocol they answer.
"""

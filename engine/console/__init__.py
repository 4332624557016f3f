"""The practice console: web pages for the manager and the front desk.

Served by `touchpoint serve` beside the webhooks (:func:`engine.console.web.mount`).
Every page and action needs a signed-in staff member (:mod:`engine.staff` accounts):

* :mod:`engine.console.sessions` — sign-in sessions kept in the database (the browser
  holds a random token, the database its hash), ended by sign-out, by inactivity
  (``console.session_idle``), by age (``console.session_max``) or by disabling the
  account; each session carries the CSRF token its forms must send back.
* :mod:`engine.console.limits` — sign-in attempts rate-limited per account and per address.
* :mod:`engine.console.web` — the routes and their guards: a page asked for without a
  session redirects to ``/login``; a fetch or a form post gets 401; a state-changing
  request without the session's CSRF token gets 403; a role without the permission 403.

Pages are server-rendered Jinja2 (``templates/``) with a small stylesheet (``static/``);
no build step.
"""

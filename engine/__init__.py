"""Touchpoint: the right message, to the right person, at the right moment — and proof of it.

The package follows the data (see docs/architecture.md):

    definitions  schedules/*.yaml + message_templates/*  → Journey, TemplateSet
    planner      (event, journeys, now) → planned touch points       (pure)
    store        patients, appointments, events, the touch-point ledger
    dispatcher   claim due → re-check guards → render → send → record
    channels     fake, console (and the real providers)
    reports      log, why
    cli          a thin shell over the above
"""

__version__ = "0.1.0"

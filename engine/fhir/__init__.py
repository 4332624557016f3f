"""FHIR R4: import a Bundle or ndjson file, and sync from an EMR's FHIR API.

::

    imports   file or page → validated R4B resources → CSV-shaped rows → engine.importer
    mapping   one resource → one row (pure; the table of docs/fhir.md)
    client    SMART Backend Services token + searches, paged (httpx2)
    sync      per resource type: search since the cursor, one transaction a page,
              the cursor advanced with the page

Errors: everything a person can fix is a :class:`~engine.errors.UserError` —
:class:`~engine.errors.ConfigError` for a missing setting or an unreadable key,
:class:`FhirServerError` for what the server answered (401, 5xx, a timeout, not a
Bundle); the cursor of the page that failed is left where it was.
"""

"""HL7 v2 in: what interface engines such as Mirth send, over MLLP or as a batch file.

::

    bytes ─ mllp.py (MLLP framing, python-hl7's asyncio server)   batch.py (files)
                      │                                             │
                      ▼                                             ▼
            receive.py  Receiver.receive: parse (python-hl7), de-duplicate on MSH-10,
                      │  apply in one transaction, ACK (ack.py)
                      ▼
            mapping.py  message → CSV-shaped rows (fields chosen by settings hl7.*)
                      ▼
            engine/importer.py  sync_patients, sync_contacts, sync_appointments

python-hl7 (``hl7``) was chosen over hl7apy: it is small, parses every v2.x version the
same way (no per-version validation that would refuse the slightly-off messages real
interface engines send), undoes escape sequences, builds ACKs and has the asyncio MLLP
server the listener needs. Touchpoint validates the few fields it uses itself, with
errors that name the field. See docs/hl7.md.
"""

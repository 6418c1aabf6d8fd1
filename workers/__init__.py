"""Parley's workers: the runtime that runs handlers (``runtime``), the pipeline's
bookkeeping (``pipeline``), partition ownership (``leases``, ``ownership``, with every
kombu/Celery internal in ``private_api``), the WhatsApp model (``webhook``) and
messenger, ``WappaEventHandler`` and ``WappaBuilder``.

``celery -A parley.workers …`` finds the Celery app in ``parley.workers.celery``.
Importing this package loads nothing else.
"""

"""Parley's ingress: the webhook endpoint (``app.create_app``), accepting deliveries
into the pipeline in one Redis round trip (``accept``), and its metrics."""

"""The wire: what the ingress, the workers and the operator tools agree on — the
envelope, which partition a user lives in, the pipeline's Redis keys and the Celery
task message. Importing it costs no Celery and no HTTP client."""

"""Publishing finished episodes: staging with manifests, the upload ledger, repo targets and
layouts, and the uploader."""

"""Publishing finished episodes: staging with manifests, the upload ledger, repo targets, the uploader."""

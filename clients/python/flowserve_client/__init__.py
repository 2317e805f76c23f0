"""flowserve client: talk to a flowserve service over HTTP (httpx + numpy only)."""

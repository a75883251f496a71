"""Storage backends: local/PVC (in place), HTTP(S) (httpx), S3-compatible (boto3)."""

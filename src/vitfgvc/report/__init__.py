"""Reports: the paper's tables from the pipeline's metrics (``published.yaml`` holds the paper's numbers)."""

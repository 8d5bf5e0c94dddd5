"""Core types and files: the configuration, errors, file formats, the BIDS layout, tissue labels."""
